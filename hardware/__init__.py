"""Device profiles, network links and the memory guard (see ``hardware/profiles.toml``).

Torch-free, so ``mpfl hardware detect`` runs on a board that only does inference:
``catalog`` parses and looks up profiles and links, ``detect`` recognises this machine,
``memory`` decides whether training fits, ``formatting`` prints them.
"""

from hardware.catalog import (
    Catalog,
    Link,
    Profile,
    get_link,
    get_profile,
    link_time,
    load_catalog,
    load_links,
    load_profiles,
    profile_aliases,
)
from hardware.detect import detect_profile
from hardware.formatting import format_link_table, format_profile, format_profile_table
from hardware.memory import apply_threads, estimate_training_bytes, memory_guard

__all__ = [
    "Catalog",
    "Link",
    "Profile",
    "apply_threads",
    "detect_profile",
    "estimate_training_bytes",
    "format_link_table",
    "format_profile",
    "format_profile_table",
    "get_link",
    "get_profile",
    "link_time",
    "load_catalog",
    "load_links",
    "load_profiles",
    "memory_guard",
    "profile_aliases",
]
