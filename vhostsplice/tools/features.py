"""Feature bits by name, for `drive --features` and drive's summary: the spec's names (spec.Feature)
without their VIRTIO_*_F_ prefixes, parsed from a list and named back."""
from __future__ import annotations

from ..errors import ConfigError
from ..spec import Feature as F, bit
from ..testing.frontend import DEFAULT_FEATURES

# Feature names for --features: the spec's names without their VIRTIO_*_F_ prefixes.
_PREFIXES = ("VIRTIO_NET_F_", "VIRTIO_RING_F_", "VIRTIO_F_", "VHOST_USER_F_", "NET_F_", "RING_F_", "F_")


def _short(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


FEATURE_NAMES: dict[str, int] = {_short(f.name): int(f) for f in F}


def parse_features(text: str) -> int:
    """'VERSION_1,MRG_RXBUF', '0x100008000', 'default,-EVENT_IDX' or '-EVENT_IDX' -> a feature mask.

    Items are separated by ',' or '+'; a name may carry its spec prefix (VIRTIO_NET_F_MRG_RXBUF);
    'default' is drive's default set; '-NAME' removes a bit; a list of removals alone starts from the
    default set; 0x... is a mask ORed in."""
    items = [i.strip() for i in text.replace("+", ",").split(",") if i.strip()]
    if not items:
        raise ConfigError(f"--features {text!r}: empty")
    mask = DEFAULT_FEATURES if all(i.startswith("-") for i in items) else 0
    for item in items:
        remove = item.startswith("-")
        value = _item_mask(item[1:] if remove else item)
        mask = mask & ~value if remove else mask | value
    return mask


def _item_mask(word: str) -> int:
    """One item of --features without its '-': 'default', a hex mask or a feature name -> its bits."""
    if word.lower() in ("default", "defaults"):
        return DEFAULT_FEATURES
    if word.lower().startswith("0x"):
        try:
            value = int(word, 16)
        except ValueError:
            raise ConfigError(f"--features: {word!r} is not a hex mask") from None
        if value >> 64:
            raise ConfigError(f"--features: {word!r} does not fit 64 bits")
        return value
    key = _short(word.upper())
    if key not in FEATURE_NAMES:
        raise ConfigError(f"--features: unknown feature {word!r}; known: {', '.join(FEATURE_NAMES)}")
    return bit(FEATURE_NAMES[key])


def feature_names(mask: int) -> list[str]:
    names = [n for n, b in FEATURE_NAMES.items() if mask & bit(b)]
    rest = mask & ~sum(bit(b) for b in FEATURE_NAMES.values())
    return names + ([f"{rest:#x}"] if rest else [])
