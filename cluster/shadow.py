"""Shadow revisions in a service's traffic: how they are written and checked, in each form.

In the spec file and the route ConfigMap, a traffic entry with ``shadow: true`` is a shadow::

    traffic:
      - {revisionName: iris-v1, percent: 100}
      - {revisionName: iris-v2, shadow: true, percent: 20}   # a copy of 20 % of the requests

Shadow entries are outside the 100 % split (the split's percents still sum to 100 without
them); ``percent`` is the share of the service's requests copied to the shadow (0-100, 100 when
absent, as Istio's ``mirrorPercentage``); a shadow takes no ``tag``; its revision must be one of
the service's and may not also take a share of the split (a revision gets copies, or requests).

In an InferenceService file, a shadow is an InferenceService of its own whose annotations name
the service it shadows (:data:`SHADOW_OF`, :data:`SHADOW_PERCENT`): its predictor becomes a
revision of that service with a shadow entry, and it gets no route of its own.

The activator sends the copies (``activator.shadow``); docs/shadow.md has the whole feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from cluster.spec import ShadowTarget, TrafficTarget

SHADOW_FIELD: Final = "shadow"
SHADOW_FIELDS: Final = ("revisionName", SHADOW_FIELD, "percent")
SHADOW_OF: Final = "shadow.zeroserve.dev/of"
"""InferenceService annotation: the name of the InferenceService (same namespace, same file)
whose requests this one gets copies of."""
SHADOW_PERCENT: Final = "shadow.zeroserve.dev/percent"
"""InferenceService annotation: the share of the requests copied, 0-100 (default 100)."""
DEFAULT_PERCENT: Final = 100


def is_shadow_entry(raw: object) -> bool:
    """Whether a traffic entry is written as a shadow (has a ``shadow`` field that is not
    false: a value other than true is then an error of :func:`parse_shadow`)."""
    return isinstance(raw, Mapping) and raw.get(SHADOW_FIELD, False) is not False


def parse_shadow(
    raw: Mapping[Any, object], path: str, *, revisions: set[str] | None = None
) -> tuple[ShadowTarget | None, list[str]]:
    """One shadow entry (``{revisionName, shadow: true, percent}``) at ``path``; each problem
    starts with the field's path (``services[0].traffic[1].percent = 120: ...``).
    ``revisions``: the names the revision must be one of (None: not checked here)."""
    problems: list[str] = []
    unknown = [str(k) for k in raw if k not in SHADOW_FIELDS]
    if unknown:
        problems.append(
            f"{path}: unknown field {', '.join(repr(k) for k in unknown)} in a shadow entry "
            f"(known: {', '.join(SHADOW_FIELDS)}; a shadow takes no tag)"
        )
    if raw.get(SHADOW_FIELD) is not True:
        problems.append(f"{path}.shadow = {raw.get(SHADOW_FIELD)!r}: must be true or false")
    revision = raw.get("revisionName")
    if not isinstance(revision, str) or not revision:
        problems.append(
            f"{path}.revisionName = {revision!r}: required: the name of one of the service's "
            "revisions"
        )
    elif revisions is not None and revision not in revisions:
        problems.append(f"{path}.revisionName = {revision!r}: no such revision")
    percent = raw.get("percent", DEFAULT_PERCENT)
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        problems.append(
            f"{path}.percent = {percent!r}: must be an integer within [0, 100] (the share of "
            "requests copied)"
        )
    if problems or not isinstance(revision, str) or not isinstance(percent, int):
        return None, problems
    return ShadowTarget(revision=revision, percent=percent), problems


def check_shadows(
    shadows: Sequence[tuple[str, ShadowTarget]], traffic: Sequence[TrafficTarget]
) -> list[str]:
    """A service's shadows (each with its entry's path) against its split: a shadow revision
    takes no share of the split, and is written once."""
    problems: list[str] = []
    in_split = {t.revision for t in traffic if t.percent > 0}
    seen: dict[str, str] = {}
    for path, shadow in shadows:
        if shadow.revision in in_split:
            problems.append(
                f"{path}.revisionName = {shadow.revision!r}: takes a share of the traffic "
                "split too: a shadow revision gets copies only"
            )
        if shadow.revision in seen:
            problems.append(
                f"{path}.revisionName = {shadow.revision!r}: duplicate shadow "
                f"(also {seen[shadow.revision]})"
            )
        seen.setdefault(shadow.revision, path)
    return problems


def shadow_entry(shadow: ShadowTarget) -> dict[str, object]:
    """A shadow as a traffic entry (the spec file's and the route ConfigMap's form)."""
    return {"revisionName": shadow.revision, SHADOW_FIELD: True, "percent": shadow.percent}


# -- the InferenceService form -----------------------------------------------------------------


def isvc_shadow(annotations: Mapping[str, str]) -> tuple[tuple[str, int] | None, list[str]]:
    """(the InferenceService shadowed, the percent) from an InferenceService's annotations, or
    None when it shadows none; problems start with the annotation's path."""
    of = annotations.get(SHADOW_OF)
    raw_percent = annotations.get(SHADOW_PERCENT)
    if of is None:
        if raw_percent is not None:
            return None, [
                f"metadata.annotations[{SHADOW_PERCENT}]: only with {SHADOW_OF} (the "
                "InferenceService this one shadows)"
            ]
        return None, []
    problems: list[str] = []
    if not of:
        problems.append(f"metadata.annotations[{SHADOW_OF}] = '': must name an InferenceService")
    percent = DEFAULT_PERCENT
    if raw_percent is not None:
        try:
            percent = int(raw_percent)
        except ValueError:
            percent = -1
        if not 0 <= percent <= 100:
            problems.append(
                f"metadata.annotations[{SHADOW_PERCENT}] = {raw_percent!r}: must be an "
                "integer within [0, 100]"
            )
    return (None if problems else (of, percent)), problems


def attach_shadows(
    services: list[dict[str, Any]], shadows: Mapping[tuple[str, str], tuple[str, int]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The translated services with each shadow InferenceService (``(namespace, name)`` → (the
    one it shadows, percent)) folded into the one it shadows: its latest revision added there
    with a shadow entry, its own service gone. Problems start with the shadow's document."""
    by_key = {(str(s["namespace"]), str(s["name"])): s for s in services}
    problems: list[str] = []
    for (namespace, name), (of, _) in shadows.items():
        doc = f"InferenceService {namespace}/{name}: metadata.annotations[{SHADOW_OF}] = {of!r}"
        target = by_key.get((namespace, of))
        if of == name:
            problems.append(f"{doc}: an InferenceService cannot shadow itself")
        elif target is None or (namespace, of) in shadows:
            problems.append(
                f"{doc}: no InferenceService {namespace}/{of} in this file to shadow"
                + (" (it is a shadow itself)" if (namespace, of) in shadows else "")
            )
    if problems:
        return services, problems
    out = [s for s in services if (str(s["namespace"]), str(s["name"])) not in shadows]
    for (namespace, name), (of, percent) in shadows.items():
        own = by_key[(namespace, name)]
        latest = own["revisions"][0]  # the rollout lists the latest first
        target = by_key[(namespace, of)]
        target["revisions"] = [*target["revisions"], latest]
        target["traffic"] = [
            *target["traffic"],
            shadow_entry(ShadowTarget(revision=str(latest["name"]), percent=percent)),
        ]
    return out, problems
