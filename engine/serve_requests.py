"""What `ddpmrt serve` accepts: a request body read with limits, parsed into a SampleRequest, and the
requests of one sampler setting cut into chunks the model can run (serve.py runs them).

A body is at most `max_body_bytes`, UTF-8 JSON, one object of scalars and flat arrays (`timesteps`);
its sampler options are checked by building the sampler once (sampler_factory.make_sampler, the
factory `ddpmrt sample` uses), so the server takes exactly the options and defaults the CLI does.
"""

import json
from dataclasses import dataclass, replace

from ddpmrt.engine.checks import check_int, shown
from ddpmrt.engine.errors import UserError

FORMATS = ("png", "npz")
REQUEST_FIELDS = ("seed", "n", "format")
DEFAULT_MAX_IMAGES = 64
# A request is a dozen short fields: 4 KiB is ten times the longest sensible body.
DEFAULT_MAX_BODY_BYTES = 4096


class BadRequest(UserError):
    """A request the server refuses, with the HTTP status to answer (400, or 413 for a body too large)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def too_large(max_body_bytes: int) -> BadRequest:
    return BadRequest(f"the body is larger than {max_body_bytes} bytes; a request is a small JSON object "
                      "(the server's --max-body-bytes raises the limit)", status=413)


def decode_body(raw: bytes, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The request body as parsed JSON: at most `max_body_bytes`, UTF-8, and flat.

    The request schema is one object of scalars and flat arrays (timesteps), so anything nested
    deeper is refused before json.loads can recurse into it (a deeply nested body would exhaust the stack).
    """
    if len(raw) > max_body_bytes:
        raise too_large(max_body_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 JSON; send e.g. {\"steps\": 50, \"n\": 4}") from None
    if _nesting(text) > 2:
        raise BadRequest("the body nests arrays or objects; a request is one JSON object of numbers, strings and "
                         "flat arrays such as {\"steps\": 5, \"timesteps\": [999, 750, 500, 250, 0]}")
    try:
        return json.loads(text)
    except ValueError:
        raise BadRequest("the body is not JSON; send e.g. {\"steps\": 50, \"n\": 4}") from None


def _nesting(text: str) -> int:
    """The deepest nesting of [ and { outside JSON strings (an upper bound where the text is not JSON)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@dataclass(frozen=True)
class SampleRequest:
    sampler: str = "ddim"
    steps: int | None = None
    options: tuple = ()      # (name, value) of the sampler options the body gave, sorted
    seed: int = 0
    n: int = 1
    format: str = "png"

    @property
    def settings(self) -> tuple:
        """What must be equal for requests to share one sampler call."""
        return self.sampler, self.steps, self.options

    def make_sampler(self, schedule):
        from ddpmrt.engine.sampler_factory import make_sampler

        return make_sampler(self.sampler, schedule, self.steps, **dict(self.options))


def _fields() -> tuple[str, ...]:
    from ddpmrt.engine.sampler_factory import ALL_OPTIONS

    return ("sampler", "steps", *ALL_OPTIONS, *REQUEST_FIELDS)


def parse_request(body, schedule, max_images: int = DEFAULT_MAX_IMAGES, tuned=None) -> SampleRequest:
    """A request body (parsed JSON) as a SampleRequest; a UserError of one line for anything else.

    The sampler and its options are checked by building the sampler once (make_sampler, the
    factory `ddpmrt sample` uses), so the server takes exactly the options and defaults the CLI does.
    """
    from ddpmrt.engine.sampler_factory import SAMPLERS, TUNED, make_sampler
    from ddpmrt.engine.samplers import STEPS_RULE

    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object such as {\"sampler\": \"ddim\", \"steps\": 50, \"n\": 4}")
    fields = _fields()
    unknown = sorted(set(body) - set(fields))
    if unknown:
        names = ", ".join(shown(name, 40) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UserError(f"unknown fields {names}; a request takes {', '.join(fields)}")
    from ddpmrt.engine.sampler_factory import all_options

    lists = {name for name, declared in all_options().items() if declared[0][1].many}
    nested = sorted(key for key, value in body.items()
                    if isinstance(value, dict) or isinstance(value, list) and key not in lists)
    if nested:
        raise UserError(f"field {shown(nested[0], 40)} must be a number or a string, not an array or object")
    sampler = body.get("sampler", "ddim")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {shown(sampler)}; choose one of {', '.join(SAMPLERS)}")
    steps = body.get("steps")
    if steps is not None:
        try:
            steps = check_int(steps, "'steps'", 1, schedule.num_train_timesteps)
        except UserError:  # the limit in the words the command line and the samplers use
            raise UserError(f"'steps': {STEPS_RULE} ({schedule.num_train_timesteps}), got {shown(steps)}") from None
    # Lists (timesteps) as tuples: requests with equal settings are grouped by them.
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in body.items()
               if key not in ("sampler", "steps", *REQUEST_FIELDS)}
    if options.get("clip_sample", 0.0) is None:
        options["clip_sample"] = 0.0  # JSON null: no clipping, as --clip-sample 0
    fmt = body.get("format", "png")
    if fmt not in FORMATS:
        raise UserError(f"unknown format {shown(fmt)}; choose one of {', '.join(FORMATS)}")
    request = SampleRequest(sampler=sampler, steps=steps, options=tuple(sorted(options.items())),
                            seed=check_int(body.get("seed", 0), "'seed'", 0, 2 ** 64 - 1),
                            n=check_int(body.get("n", 1), "'n'", 1, max_images), format=fmt)
    sampler = make_sampler(sampler, schedule, steps, tuned=tuned, **options)  # every option checked now, before
    if options.get("spacing") == TUNED:                                       # the request waits in a batch
        # The model's tuned timesteps, as if the request had given them: it groups with their equals.
        options = {**{k: v for k, v in options.items() if k != "spacing"}, "timesteps": tuple(map(int, sampler.timesteps))}
        request = replace(request, steps=None, options=tuple(sorted(options.items())))
    return request


def batch_chunks(members: list[int], sizes: list[int], largest: int | None) -> list[list[int]]:
    """`members` (requests of one sampler setting, with their image counts) in order, in chunks of at most
    `largest` images (None: one chunk).  Each request is one the model runs alone (SamplingService.parse
    checked it), so every chunk is at least the model's smallest batch too; a static batch of s images
    puts each request of s images in a chunk of its own."""
    chunks: list[list[int]] = []
    total = 0
    for member, n in zip(members, sizes):
        if not chunks or (largest is not None and total + n > largest):
            chunks.append([])
            total = 0
        chunks[-1].append(member)
        total += n
    return chunks
