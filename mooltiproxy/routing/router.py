"""Which target a request goes to: the ``target`` header, else its ``model`` alias, else the default."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ..config.model import ModelAlias
from ..config.validators import did_you_mean
from ..errors import NotFound
from .targets import Target


class Router:
    def __init__(self, targets: Mapping[str, Target], default: str | None, models: Mapping[str, ModelAlias]) -> None:
        self.targets = targets
        self.default = default
        self.models = models

    def pick(self, header: str | None, model: str | None, allowed: Collection[str] | None = None) -> tuple[Target, ModelAlias | None]:
        """The target for a request with this ``target`` header and this ``model`` field. ``allowed``: the targets the
        request's key may use (None: all), the only ones its error messages name."""
        if header:
            return self._named(header, allowed), None
        if model is not None and self.models:
            alias = self.models.get(model)
            if alias is not None:
                return self.targets[alias.target], alias
        if self.default is not None:
            return self.targets[self.default], None
        if not self.targets:
            raise NotFound(
                "No targets are configured. Run the proxy with one (mooltiproxy serve --target URL), or write a config "
                "with `mooltiproxy init` and add one under 'targets:'.",
                code="target_not_found",
            )
        raise NotFound(
            f"No target was chosen: send a 'target' header naming one of {self._known(allowed)}, "
            f"use a model alias from 'models:', or set targets.default in the config.",
            param="target",
            code="target_not_found",
        )

    def pick_if_any(self, header: str | None, allowed: Collection[str] | None = None) -> Target | None:
        """The target a request without a body goes to, or None when nothing chooses one."""
        if header:
            return self._named(header, allowed)
        return self.targets.get(self.default) if self.default else None

    def listing(self, allowed: Collection[str] | None = None) -> dict[str, object]:
        """``GET /v1/models`` as the proxy itself answers it: every target and model alias (that the key may use)."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "mooltiproxy"}
                for name in self.targets if allowed is None or name in allowed]
        data += [{"id": alias, "object": "model", "created": 0, "owned_by": spec.target}
                 for alias, spec in self.models.items() if allowed is None or spec.target in allowed]
        return {"object": "list", "data": data}

    def _named(self, name: str, allowed: Collection[str] | None = None) -> Target:
        target = self.targets.get(name)
        if target is None:
            shown = [t for t in self.targets if allowed is None or t in allowed]
            raise NotFound(
                f"Unknown target '{name}' in the 'target' header{did_you_mean(name, shown)}. "
                f"Known targets: {self._known(allowed)}.",
                param="target",
                code="target_not_found",
            )
        return target

    def _known(self, allowed: Collection[str] | None = None) -> str:
        return ", ".join(t for t in self.targets if allowed is None or t in allowed) or "none"
