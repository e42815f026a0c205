"""Engine options (`--engine-option KEY=VALUE`, or keyword arguments of `Refiner`): one strict parser.

Each engine declares what it takes as `OPTIONS`, a dict of name -> `Option`; `parse_options` checks the
keys and values it is given and returns every declared option's value (the given one, else the default).
Values come as strings from the command line or as Python values from the API (where None means not given).
An unknown key or a value of the wrong form is a one-line `CCFastError` naming the engine, the option and what it
accepts (the CLI turns it into exit 2); nothing is guessed (`cuda_graph=yes2` is an error, not False).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..batch_buckets import parse_buckets
from ..errors import CCFastError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
KINDS = ("bool", "int", "float", "choice", "text", "buckets")


@dataclass(frozen=True)
class Option:
    """One engine option. `default` None means unset (the engine decides, e.g. by device)."""

    kind: str
    default: object = None
    choices: tuple[str, ...] = ()  # kind "choice": the accepted values (compared lower-case)
    minimum: float | None = None  # kind "int"/"float": the smallest accepted value
    auto: bool = False  # kind "buckets": "auto" is accepted and read as None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"option kind {self.kind!r} is not one of {KINDS}")

    def accepted(self) -> str:
        """What the option accepts, in words, for error messages."""
        if self.kind == "bool":
            return "0/1 (or true/false, yes/no, on/off)"
        if self.kind == "choice":
            return (
                ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}" if len(self.choices) > 1 else self.choices[0]
            )
        if self.kind == "buckets":
            return "comma-separated positive integers" + (" or auto" if self.auto else "")
        if self.kind == "text":
            return "a text"
        noun = "an integer" if self.kind == "int" else "a number"
        if self.minimum == 1 and self.kind == "int":
            return "a positive integer"
        return noun if self.minimum is None else f"{noun} >= {self.minimum:g}"

    def parse(self, value):
        """The value in this option's type; ValueError (TypeError) when it is not of the accepted form."""
        if self.kind == "text":
            return str(value)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in TRUE or text in FALSE:
                return text in TRUE
            raise ValueError(value)
        if self.kind == "choice":
            text = str(value).strip().lower()
            if text not in self.choices:
                raise ValueError(value)
            return text
        if self.kind == "buckets":
            if self.auto and str(value).strip().lower() == "auto":
                return None
            try:
                return tuple(parse_buckets(value))
            except CCFastError as exc:
                raise ValueError(value) from exc
        if isinstance(value, bool):  # True is not the integer 1 here
            raise TypeError(value)
        number = int(str(value).strip()) if self.kind == "int" else float(str(value).strip())
        if self.minimum is not None and number < self.minimum:
            raise ValueError(value)
        return number


def flag(default: bool | None) -> Option:
    return Option("bool", default)


def integer(default: int | None, minimum: int | None = 1) -> Option:
    return Option("int", default, minimum=minimum)


def choice(default: str | None, *choices: str) -> Option:
    return Option("choice", default, choices=choices)


def text(default: str | None = None) -> Option:
    return Option("text", default)


def buckets(default: str | None, auto: bool = False) -> Option:
    return Option("buckets", None if default is None else tuple(parse_buckets(default)), auto=auto)


def parse_key_values(items, where: str) -> dict[str, str]:
    """KEY=VALUE items → {KEY: VALUE}, the one rule for every list of engine options (the refine CLI's repeated
    `--engine-option`, the benchmarks' `KEY=V,KEY=V` variants): '-' in a key reads as '_', and an item without
    '=', an empty key or a key given twice is a one-line error (a repeated key is a typo more often than an
    override)."""
    options: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise CCFastError(f"{where}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise CCFastError(f"{where}: an option has no name ({item!r})")
        if key in options:
            raise CCFastError(f"{where}: option {key!r} given twice")
        options[key] = value.strip()
    return options


def reject_unknown_options(engine: str, options, allowed) -> None:
    """`--engine-option` keys an engine does not take are an error that lists the ones it does."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"options: {', '.join(sorted(allowed))}" if allowed else "it takes no options"
        raise CCFastError(f"engine {engine!r} has no option {', '.join(unknown)}; {takes}")


def parse_options(engine: str, spec: dict[str, Option], options: dict) -> dict:
    """Every option of `spec`: the parsed given value, else its default. Strict (see the module docstring)."""
    reject_unknown_options(engine, options, spec)
    out = {name: opt.default for name, opt in spec.items()}
    for name, value in options.items():
        opt = spec[name]
        if value is None:  # the API's way to say "not given"
            continue
        try:
            out[name] = opt.parse(value)
        except (ValueError, TypeError):
            raise CCFastError(f"engine {engine!r} option {name}={value!r}: expected {opt.accepted()}") from None
    return out
