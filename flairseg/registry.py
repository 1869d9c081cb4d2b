"""Name-to-builder mappings with a factory that names the valid choices on a bad name.

`KnobRegistry` is a `Registry` whose builders declare their keyword knobs as they register
(a `Knob`: flat key, preset, one-line help, choices). Everything that lists knobs reads them
from a registry: TrainConfig's fields, the `flairseg.train` flags, search-file validation
and the MLflow params. Models (flairseg.models) and losses (flairseg.losses) use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flairseg.errors import ConfigError

T = TypeVar("T", bound=Callable)
B = TypeVar("B", bound=Callable)


class Registry(Generic[T]):
    """Holds builders by name; `register` is a decorator, `get` fails with the list of names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(builder: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


@dataclass(frozen=True)
class Knob:
    """One keyword setting a registered builder takes, under its flat key (`name`).

    `default` is the preset, what the knob left unset (None) means; its type is the knob's
    type, so write 1.0, not 1, for a float knob. `choices`, when given, are the only values.
    """

    name: str
    default: Any
    help: str  # one line, shown by `python -m flairseg.train --help`
    choices: tuple[Any, ...] = ()

    @property
    def type(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """The help line, with the choices when there are some."""
        if not self.choices:
            return self.help
        return f"{self.help}: {' | '.join(map(str, self.choices))}"


class KnobRegistry(Registry):
    """A Registry whose builders declare their knobs: `@REG.register(name, knobs=[Knob(...)])`.

    A builder takes the registry's `fixed` arguments (a model's in_channels and image_size)
    and then exactly its declared knobs; `build` fills a knob left None with its preset and
    fails on a knob the builder does not declare. The flat vocabulary is the union of the
    knobs in registration order (`union`); a name two builders share (unet's and setr's
    `depth`) is one key and must have one type, and with `one_preset` also one preset (a
    loss knob's flat key carries its preset, not None). `subscribe` lets TrainConfig regrow
    its fields when a builder registers later (a notebook, a test).
    """

    def __init__(self, kind: str, fixed: Sequence[str] = (), one_preset: bool = False) -> None:
        super().__init__(kind)
        self.fixed = tuple(fixed)
        self.one_preset = one_preset
        self._knobs: dict[str, tuple[Knob, ...]] = {}  # in registration order
        self._listeners: list[Callable[[], None]] = []

    def register(self, name: str, knobs: Sequence[Knob] = ()) -> Callable[[B], B]:
        def decorator(builder: B) -> B:
            declared = tuple(knobs)
            Registry.register(self, name)(builder)  # fails on a name registered twice
            try:
                self._check_declaration(name, builder, declared)
                self._knobs[name] = declared
                self._notify()
            except Exception:  # a bad declaration, or a listener refused it: as it was
                del self._items[name]
                self._knobs.pop(name, None)
                self._notify()
                raise
            return builder

        return decorator

    def unregister(self, name: str) -> None:
        """Remove `name` (a model a test or notebook registered for a while)."""
        self.get(name)
        del self._items[name]
        del self._knobs[name]
        self._notify()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every register and unregister; it may raise to refuse one."""
        self._listeners.append(listener)

    def knobs(self, name: str) -> tuple[Knob, ...]:
        """The knobs `name` declared, in its order; an unknown name fails with the choices."""
        self.get(name)
        return self._knobs[name]

    def union(self) -> dict[str, list[tuple[str, Knob]]]:
        """{flat key: [(builder name, its Knob), ...]} over every builder, in registration order."""
        out: dict[str, list[tuple[str, Knob]]] = {}
        for owner, knobs in self._knobs.items():
            for knob in knobs:
                out.setdefault(knob.name, []).append((owner, knob))
        return out

    def build(self, name: str, fixed: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """Call the builder `name` with `fixed` and its knobs: `params`, presets where None."""
        builder = self.get(name)
        knobs = {k.name: k for k in self._knobs[name]}
        given = {k: v for k, v in params.items() if v is not None}
        for key, value in given.items():
            if key not in knobs:
                raise ConfigError(
                    f"{key} does not apply to {self.kind} {name!r} "
                    f"(its knobs: {', '.join(knobs) or 'none'})"
                )
            choices = knobs[key].choices
            if choices and value not in choices:
                raise ConfigError(
                    f"{key}={value!r} for {name}; choose one of: {', '.join(map(str, choices))}"
                )
        return builder(**fixed, **{k: given.get(k, knob.default) for k, knob in knobs.items()})

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _check_declaration(self, name: str, builder: Callable, knobs: tuple[Knob, ...]) -> None:
        """Fail at import time when a declaration and its builder disagree, or clash."""
        where = f"{self.kind} {name!r}"
        names = [k.name for k in knobs]
        params = list(inspect.signature(builder).parameters)
        n = len(self.fixed)
        if params[:n] != list(self.fixed) or sorted(params[n:]) != sorted(names):
            raise RuntimeError(
                f"{where}: the builder takes ({', '.join(params)}) but must take "
                f"({', '.join([*self.fixed, *names])}): the fixed arguments, then its knobs"
            )
        if len(set(names)) != len(names):
            raise RuntimeError(f"{where}: a knob is declared twice in {names}")
        shared = self.union()
        for knob in knobs:
            if knob.choices and knob.default not in knob.choices:
                raise RuntimeError(f"{where}: {knob.name}'s preset is not one of its choices")
            for owner, other in shared.get(knob.name, []):
                if other.type is not knob.type:
                    raise RuntimeError(
                        f"{where}: knob {knob.name} is {knob.type.__name__} here but "
                        f"{other.type.__name__} in {self.kind} {owner!r}; a shared key has one type"
                    )
                if self.one_preset and other.default != knob.default:
                    raise RuntimeError(
                        f"{where}: knob {knob.name} has preset {knob.default!r} here but "
                        f"{other.default!r} in {self.kind} {owner!r}; a shared key has one preset"
                    )
