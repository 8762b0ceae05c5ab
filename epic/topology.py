"""The testbed topology: typed schema, loading with line-accurate errors, and JSON Schema.

A topology file (``topology.yaml``) names the testbed, the broker, the central node, the link
profiles and the devices. It is parsed once into frozen pydantic models; an unknown key is an
error. Every error names the file, the line, the path of the bad field and the reason::

    topology.yaml:23: devices[2].receivers: overlaps devices[1] [14, 28), got [20, 34]

Units are in the field names (``bandwidth_bps``, ``delay_s``, ``distance_m``...). A link
profile of kind ``dedicated`` gives every device that names it its own copy of the link; a
``shared`` profile is one medium (one SimPy Resource) that all its devices contend for.
A device's ``hardware`` names a class (`epic.hardware`: a preset, or one defined under
``hardware_classes``) giving its container's CPU quota and memory limit and the model's compute
time and power; without one, the device keeps the older ``cpu_scale`` and ``compute_w``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
    model_validator,
)

from epic.errors import InputError
from epic.hardware import HARDWARE_PRESET_NAMES, PRESETS, HardwareClass, _HardwareFieldError

__all__ = [
    "RADIO_PRESET_NAMES",
    "BrokerSpec",
    "CentralSpec",
    "DeviceSpec",
    "EnergySpec",
    "FirstOrderEnergy",
    "HardwareClass",
    "LinkSpec",
    "PresetEnergy",
    "Problem",
    "ReloadResult",
    "StateEnergy",
    "Topology",
    "TopologyError",
    "check_model_slots",
    "json_schema_text",
    "load_topology",
    "model_slot_problems",
    "parse_topology",
    "reload_topology",
    "write_json_schema",
]

log = logging.getLogger(__name__)

RadioPresetName = Literal[
    "wifi-80211n", "ble-1m", "lora-sf7", "lora-sf8", "lora-sf9", "lora-sf10", "lora-sf11",
    "lora-sf12", "lte-m",
]
#: The radio presets a topology may name; `emulation.energy.PRESETS` holds their numbers.
RADIO_PRESET_NAMES: tuple[str, ...] = RadioPresetName.__args__  # type: ignore[attr-defined]


class _FieldError(ValueError):
    """A cross-field check failure that knows the path (relative to its model) of the bad field."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class BrokerSpec(_Model):
    """The MQTT broker: where it listens and how long it takes to route one message."""

    host: str = Field("localhost", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    processing_s: float = Field(0.0002, ge=0, description="Routing time per message, seconds.")


class CentralSpec(_Model):
    """The central node: the assembly deadline per shot and the processing time per frame."""

    decode_deadline_s: float = Field(gt=0, description="Wait for a shot's frames, seconds.")
    processing_s: float = Field(ge=0, description="Ingest time per received frame, seconds.")


class LinkSpec(_Model):
    """A link profile: dedicated (one copy per device) or shared (one medium for all).

    A frame of ``n`` payload bytes is cut into ``ceil(n / (mtu_bytes - overhead_bytes))``
    packets, each carrying ``overhead_bytes`` of headers. Each packet is lost with probability
    ``loss`` and resent ``rto_s`` after its round, at most ``max_retries`` times.
    """

    kind: Literal["dedicated", "shared"]
    bandwidth_bps: float = Field(gt=0, description="Bit rate on the medium, bit/s.")
    delay_s: float = Field(ge=0, description="One-way propagation delay, seconds.")
    jitter_s: float = Field(0.0, ge=0, description="Extra delay, uniform in [0, jitter_s].")
    loss: float = Field(0.0, ge=0, le=1, description="Loss probability per packet, 0..1.")
    mtu_bytes: int = Field(1500, gt=0, description="Largest packet, headers included, bytes.")
    overhead_bytes: int = Field(40, ge=0, description="Headers per packet, bytes.")
    ack_payload_bytes: int = Field(4, ge=0, description="MQTT PUBACK size, bytes.")
    rto_s: float = Field(0.2, gt=0, description="Retransmission timeout, seconds.")
    max_retries: int = Field(5, ge=0, description="Resends of one packet before the frame is lost.")

    @model_validator(mode="after")
    def _room_for_payload(self) -> LinkSpec:
        if self.overhead_bytes >= self.mtu_bytes:
            raise _FieldError(("overhead_bytes",), f"must be < mtu_bytes ({self.mtu_bytes}), "
                              f"got {self.overhead_bytes}")
        return self

    @property
    def payload_per_packet_bytes(self) -> int:
        """Payload bytes one packet can carry: ``mtu_bytes - overhead_bytes``."""
        return self.mtu_bytes - self.overhead_bytes


class StateEnergy(_Model):
    """A state-based radio: constant power in each state (transmit, receive, idle, sleep)."""

    model: Literal["state"]
    tx_w: float = Field(ge=0)
    rx_w: float = Field(ge=0)
    idle_w: float = Field(ge=0)
    sleep_w: float = Field(0.0, ge=0)


class FirstOrderEnergy(_Model):
    """Heinzelman's first-order radio model: energy per bit, free space or multipath amplifier.

    Transmit: ``E_elec + eps_fs d^2`` J/bit when ``d < d0``, else ``E_elec + eps_mp d^4``, with
    ``d0 = sqrt(eps_fs / eps_mp)``; receive: ``E_elec`` J/bit. The defaults are the values of
    Heinzelman et al. (2002): 50 nJ/bit, 10 pJ/bit/m², 0.0013 pJ/bit/m⁴ (d0 ≈ 87.7 m).
    """

    model: Literal["first-order"]
    e_elec_j_per_bit: float = Field(50e-9, ge=0)
    eps_fs_j_per_bit_m2: float = Field(10e-12, gt=0)
    eps_mp_j_per_bit_m4: float = Field(0.0013e-12, gt=0)
    distance_m: float = Field(ge=0)
    idle_w: float = Field(0.0, ge=0)
    sleep_w: float = Field(0.0, ge=0)

    @property
    def crossover_m(self) -> float:
        """The distance d0 where the free-space and multipath amplifier costs meet, metres."""
        return math.sqrt(self.eps_fs_j_per_bit_m2 / self.eps_mp_j_per_bit_m4)


class PresetEnergy(_Model):
    """A named radio preset (see docs/topology.md); a bare string in YAML means this."""

    model: Literal["preset"]
    name: RadioPresetName


EnergySpec = Annotated[StateEnergy | FirstOrderEnergy | PresetEnergy, Field(discriminator="model")]


class DeviceSpec(_Model):
    """One edge device: its receivers ``[start, stop)``, its link profile and its radio."""

    id: str = Field(pattern=r"^device-[1-9][0-9]{0,8}$", max_length=16,
                    description="`device-<n>`, n >= 1: the wire format's device id, the MQTT "
                                "username and topic level")
    receivers: tuple[NonNegativeInt, NonNegativeInt]
    link: str = Field(description="Name of a profile under `links`.")
    energy: EnergySpec
    hardware: str | None = Field(None, min_length=1, description="A hardware class: a preset "
                                 "(rpi4, jetson-nano-10w, jetson-nano-5w, x86-gateway) or a "
                                 "name under `hardware_classes`.")
    cpu_scale: float = Field(1.0, gt=0, description="Without `hardware` only: compute time "
                                                    "multiplier vs the reference.")
    compute_w: float = Field(3.0, ge=0, description="Without `hardware` only: extra power "
                                                    "while computing, watts.")
    radio_idle_state: Literal["idle", "sleep"] = "idle"

    @model_validator(mode="after")
    def _class_or_legacy(self) -> DeviceSpec:
        for name in ("cpu_scale", "compute_w"):  # a default (a dumped model's) is no conflict
            if (self.hardware is not None and name in self.model_fields_set
                    and getattr(self, name) != type(self).model_fields[name].default):
                where = "its `cpu_scale`" if name == "cpu_scale" else "its active_w and idle_w"
                raise _FieldError((name,), f"the hardware class {self.hardware!r} sets this "
                                           f"(through {where}); remove it from the device, got "
                                           f"{getattr(self, name):g}")
        return self

    @property
    def number(self) -> int:
        """The integer ``n`` of ``device-<n>``: the device id in frame headers."""
        return int(self.id.split("-", 1)[1])

    @field_validator("energy", mode="before")
    @classmethod
    def _preset_shorthand(cls, value: Any) -> Any:
        return {"model": "preset", "name": value} if isinstance(value, str) else value

    @field_validator("receivers")
    @classmethod
    def _non_empty(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[1] <= value[0]:
            raise _FieldError((), f"stop must be > start, got [{value[0]}, {value[1]}]")
        return value


class Topology(_Model):
    """A whole testbed: broker, central, link profiles and devices (ids unique, receivers
    disjoint, every link name defined)."""

    testbed: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                         description="1-64 of [A-Za-z0-9_.-], starting with a letter or digit: "
                                     "the topic level `epic/<testbed>/...`")
    broker: BrokerSpec = BrokerSpec()
    central: CentralSpec
    links: dict[str, LinkSpec] = Field(min_length=1)
    hardware_classes: dict[str, HardwareClass] = Field(
        default_factory=dict, description="User-defined hardware classes by name (a preset's "
                                          "name may not be reused).")
    devices: tuple[DeviceSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Topology:
        for name in self.hardware_classes:
            if name in PRESETS:
                raise _FieldError(("hardware_classes", name), f"{name!r} is a preset's name; "
                                  f"name the class otherwise (presets: "
                                  f"{', '.join(HARDWARE_PRESET_NAMES)})")
        seen: dict[str, int] = {}
        for i, device in enumerate(self.devices):
            if device.id in seen:
                raise _FieldError(("devices", i, "id"), f"duplicate device id {device.id!r} "
                                  f"(also devices[{seen[device.id]}])")
            seen[device.id] = i
            if device.link not in self.links:
                raise _FieldError(("devices", i, "link"), f"unknown link {device.link!r}; "
                                  f"defined: {', '.join(sorted(self.links))}")
            if device.hardware is not None and self.hardware_of(device) is None:
                known = [*HARDWARE_PRESET_NAMES, *sorted(self.hardware_classes)]
                raise _FieldError(("devices", i, "hardware"), f"unknown hardware class "
                                  f"{device.hardware!r}; known: {', '.join(known)}")
        order = sorted(range(len(self.devices)), key=lambda k: self.devices[k].receivers)
        for a, b in itertools.pairwise(order):
            ra, rb = self.devices[a].receivers, self.devices[b].receivers
            if rb[0] < ra[1]:
                raise _FieldError(("devices", b, "receivers"), f"overlaps devices[{a}] "
                                  f"[{ra[0]}, {ra[1]}), got [{rb[0]}, {rb[1]}]")
        return self

    def link_of(self, device: DeviceSpec) -> LinkSpec:
        """The link profile a device names."""
        return self.links[device.link]

    def hardware_of(self, device: DeviceSpec) -> HardwareClass | None:
        """The hardware class a device names (its own, else the preset), or None if it names
        none (or an unknown one, which validation rejects)."""
        if device.hardware is None:
            return None
        own = self.hardware_classes.get(device.hardware)
        if own is not None:
            return own
        preset = PRESETS.get(device.hardware)
        return preset.hardware if preset is not None else None

    def compute_of(self, device: DeviceSpec) -> tuple[float, float, float]:
        """The model's compute terms of a device: (time multiplier of the host encode time,
        active watts, idle watts). With a class: its ``compute_scale``, ``active_w``,
        ``idle_w``; without: the device's ``cpu_scale``, ``compute_w`` and 0 W."""
        hw = self.hardware_of(device)
        if hw is None:
            return device.cpu_scale, device.compute_w, 0.0
        return hw.compute_scale, hw.active_w, hw.idle_w


@dataclass(frozen=True)
class Problem:
    """One bad field: file, 1-based line (0 when unknown), dotted path and reason."""

    source: str
    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path or '<top>'}: {self.reason}"


class TopologyError(InputError):
    """A topology file is unreadable or invalid; `problems` lists every bad field."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _locate(root: yaml.Node | None, loc: tuple[str | int, ...]) -> tuple[int, tuple]:
    """Walk the YAML node tree along a pydantic ``loc``: (1-based line, path that exists).

    Parts that are not in the YAML (discriminator tags) are dropped, except a last part (a
    missing or unknown key), which is kept and reported at its parent's line.
    """
    node, line, path = root, (root.start_mark.line + 1 if root else 0), []
    for k, part in enumerate(loc):
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child, line = value_node, key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(
                node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is not None:
            node = child
            path.append(part)
        elif k == len(loc) - 1 or isinstance(part, int):
            path.append(part)
    return line, tuple(path)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: dict[str, Any]) -> tuple[tuple, str]:
    """(extra loc, human reason) for one pydantic error dict."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    original = ctx.get("error")
    if isinstance(original, _FieldError | _HardwareFieldError):
        return original.loc, original.reason
    bounds = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
    if kind in bounds:
        op, key = bounds[kind]
        return (), f"must be {op} {ctx[key]:g}, got {_short(value)}"
    if kind == "extra_forbidden":
        return (), "unknown key"
    if kind == "string_pattern_mismatch" and tuple(error["loc"]) == ("testbed",):
        return (), f"must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter or " \
                   f"digit (it is an MQTT topic level), got {_short(value)}"
    if kind == "missing":
        return (), "required field is missing"
    if kind == "literal_error":
        return (), f"must be one of {ctx['expected']}, got {_short(value)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return (), f"energy model must be a preset name or a mapping with model: one of " \
                   f"'state', 'first-order', 'preset', got {_short(value)}"
    message = error["msg"].removeprefix("Value error, ")
    return (), f"{message[0].lower()}{message[1:]}, got {_short(value)}"


def _duplicate_keys(node: yaml.Node | None, source: str, loc: tuple = ()) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                problems.append(Problem(source, key_node.start_mark.line + 1,
                                        _format_path((*loc, key_node.value)), "duplicate key"))
            seen.add(key_node.value)
            problems += _duplicate_keys(value_node, source, (*loc, key_node.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, source, (*loc, i))
    return problems


#: libyaml's parser where PyYAML has it (about 5x faster than the pure-Python one on a
#: 1,000-device file); its nodes carry the same line marks, so errors keep their lines.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (None for an empty document); raises `yaml.YAMLError`."""
    loader = _YAML_LOADER(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, source: str) -> TopologyError:
    mark = getattr(exc, "problem_mark", None)
    reason = str(getattr(exc, "problem", None) or exc)
    return TopologyError((Problem(source, mark.line + 1 if mark else 0, "", reason),))


def parse_topology(text: str, source: str = "<string>") -> Topology:
    """Parse and validate topology YAML text. Raises `TopologyError` naming ``source`` and line.

    The text is parsed once: the node tree gives the lines and the duplicate keys, and the
    data is constructed from it."""
    loader = _YAML_LOADER(text)
    try:
        root = loader.get_single_node()
        problems = _duplicate_keys(root, source)
        if problems and isinstance(root, yaml.MappingNode):
            raise TopologyError(tuple(problems))
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, source) from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        reason = f"must be a mapping, got {type(data).__name__}"
        raise TopologyError((Problem(source, 1, "", reason),))
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for error in errors:
            nested = any(len(o["loc"]) > len(error["loc"]) and o["loc"][: len(error["loc"])]
                         == error["loc"] for o in errors)
            if error["type"] == "too_short" and nested:
                continue  # "no items after validation": the items' own errors say why
            extra, reason = _reason(error)
            line, path = _locate(root, (*error["loc"], *extra))
            problems.append(Problem(source, line, _format_path(path), reason))
        raise TopologyError(tuple(problems)) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file. Raises `TopologyError` (an `InputError`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError((Problem(str(path), 0, "", f"cannot read: {exc.strerror}"),)) from exc
    return parse_topology(text, str(path))


def model_slot_problems(topology: Topology, *, n_devices: int, rx_per_device: int,
                        model: str, source: str = "<string>",
                        text: str | None = None) -> tuple[Problem, ...]:
    """The devices whose receivers are not one slot of a distributed model.

    A model of ``n_devices`` slots of ``rx_per_device`` receivers takes a device's latent
    only if its receivers are exactly ``[s * k, (s + 1) * k)`` for a slot ``s < n_devices``
    (what central's ``LatentDecoder`` requires). ``text`` (the YAML the topology came from)
    gives each problem its line; ``model`` names the model in the reason.
    """
    k = rx_per_device
    root, composed = None, False
    slots = ", ".join(f"[{s * k}, {(s + 1) * k})" for s in range(min(n_devices, 3)))
    slots += f", ..., [{(n_devices - 1) * k}, {n_devices * k})" if n_devices > 3 else ""
    problems = []
    for i, device in enumerate(topology.devices):
        first, stop = device.receivers
        if first % k == 0 and stop - first == k and first // k < n_devices:
            continue
        if text is not None and not composed:  # the lines, read only when there is a problem
            composed = True
            with contextlib.suppress(yaml.YAMLError):
                root = _compose(text)
        line, path = _locate(root, ("devices", i, "receivers"))
        problems.append(Problem(source, line, _format_path(path),
                                f"not one of the {n_devices} slots of {k} receivers of {model} "
                                f"({slots}), got [{first}, {stop}]"))
    return tuple(problems)


def check_model_slots(path: str | Path, topology: Topology, *, n_devices: int,
                      rx_per_device: int, model: str) -> None:
    """Raise `TopologyError` (``FILE:LINE: devices[i].receivers: ...``) naming the first
    device of ``topology`` (loaded from ``path``) that is not one slot of the model; see
    `model_slot_problems`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = None
    problems = model_slot_problems(topology, n_devices=n_devices, rx_per_device=rx_per_device,
                                   model=model, source=str(path), text=text)
    if problems:
        first = problems[0]
        more = len(problems) - 1
        if more:
            first = Problem(first.source, first.line, first.path,
                            f"{first.reason} (and {more} more device{'s' * (more > 1)})")
        raise TopologyError((first,))


@dataclass(frozen=True)
class ReloadResult:
    """The topology in effect after a reload, whether it changed, and the error if it failed."""

    topology: Topology
    changed: bool
    error: TopologyError | None = None


def reload_topology(path: str | Path, current: Topology) -> ReloadResult:
    """Re-read ``path``; on any error keep ``current`` running and return the error."""
    try:
        new = load_topology(path)
    except TopologyError as exc:
        log.warning("topology reload rejected, keeping the running one: %s", exc)
        return ReloadResult(current, False, exc)
    return ReloadResult(new, new != current)


def json_schema_text() -> str:
    """The JSON Schema of `Topology`, as the text of docs/topology.schema.json."""
    schema = Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "EPIC testbed topology"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_json_schema(path: str | Path) -> Path:
    """Write `json_schema_text()` to ``path`` and return it."""
    path = Path(path)
    path.write_text(json_schema_text(), encoding="utf-8")
    return path
