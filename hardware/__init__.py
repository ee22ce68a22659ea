"""Device profiles, network links and the memory guard (see ``hardware/profiles.toml``)."""

from hardware.profiles import (
    Link,
    Profile,
    apply_threads,
    detect_profile,
    estimate_training_bytes,
    format_link_table,
    format_profile,
    format_profile_table,
    get_link,
    get_profile,
    link_time,
    load_links,
    load_profiles,
    memory_guard,
    profile_aliases,
)

__all__ = [
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
    "load_links",
    "load_profiles",
    "memory_guard",
    "profile_aliases",
]
