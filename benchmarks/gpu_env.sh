# Sourced by gpu_check.sh and gpu_session.sh: installs this checkout (and any wheels carried in .whl/)
# into /tmp/site beside the device image's own packages.
#
# --upgrade on both installs: a machine still warm from the last call keeps /tmp/site, and without it
# pip would leave the old copy there, so a rerun after a fix would test the old code.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} DDPMRT_CACHE_DIR=/tmp/ddpmrt-cache
# Every run starts from an empty Inductor cache, so compile times are cold ones.
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/inductor-cache.XXXX)
export TORCHINDUCTOR_CACHE_DIR
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site .
