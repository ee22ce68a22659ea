"""Profiles and links as text, for ``mpfl hardware list`` and ``show``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hardware.catalog import Link, Profile, load_catalog
from hardware.detect import Machine


def format_profile(profile: Profile, links: Mapping[str, Link] | None = None) -> str:
    """A multi-line description of one profile, for ``mpfl hardware show``."""
    links = load_catalog().links if links is None else links
    link = links.get(profile.link)
    link_text = profile.link
    if link is not None:
        link_text += (
            f" ({link.uplink_kbps:g} kbit/s up, {link.downlink_kbps:g} kbit/s down, "
            f"{link.latency_ms:g} ms)"
        )
    rows = [
        ("profile", profile.label),
        ("description", profile.description),
        ("arch", profile.arch),
        ("cores", str(profile.cores)),
        ("ram", f"{profile.ram_mb} MB"),
        ("torch threads", str(profile.torch_threads)),
        ("batch size", str(profile.batch_size)),
        ("train memory budget", f"{profile.train_memory_budget_mb} MB"),
        ("training speed", _speed_text(profile)),
        ("role", profile.role),
        ("why", profile.role_reason),
        ("default link", link_text),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    body = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in body
    )


def format_profile_table(profiles: Iterable[Profile] | Mapping[str, Profile]) -> str:
    """One line per profile, for ``mpfl hardware list``."""
    items = profiles.values() if isinstance(profiles, Mapping) else profiles
    header = (
        "NAME",
        "VER",
        "ARCH",
        "CORES",
        "RAM MB",
        "THREADS",
        "BATCH",
        "BUDGET MB",
        "ROLE",
        "LINK",
    )
    rows = [
        (
            p.name,
            str(p.version),
            p.arch,
            str(p.cores),
            str(p.ram_mb),
            str(p.torch_threads),
            str(p.batch_size),
            str(p.train_memory_budget_mb),
            p.role,
            p.link,
        )
        for p in items
    ]
    return _table(header, rows)


def format_link_table(links: Iterable[Link] | Mapping[str, Link]) -> str:
    """One line per link (effective planning figures)."""
    items = links.values() if isinstance(links, Mapping) else links
    header = ("LINK", "UP KBIT/S", "DOWN KBIT/S", "LATENCY MS", "DESCRIPTION")
    rows = [
        (k.name, f"{k.uplink_kbps:g}", f"{k.downlink_kbps:g}", f"{k.latency_ms:g}", k.description)
        for k in items
    ]
    return _table(header, rows)


def format_detection(machine: Machine, profile: Profile | None) -> str:
    """This machine's own figures beside the matched profile's declared ones
    (``mpfl hardware detect``), and what the match means for ``mpfl-edge``."""
    declared = profile.label if profile is not None else "no profile matches"
    ram = f"{machine.ram_mb:,.0f} MB" if machine.ram_mb is not None else "unknown"
    flags = " ".join(machine.ml_flags) or "none of note"
    rows = [
        ("", "this machine", f"profile {declared}"),
        ("board", machine.board or "- (no device tree)", ", ".join(profile.detect_models)
         if profile and profile.detect_models else "-"),
        ("arch", machine.arch, profile.arch if profile else "-"),
        ("cores", str(machine.cores), str(profile.cores) if profile else "-"),
        ("ram", ram, f"{profile.ram_mb} MB" if profile else "-"),
    ]
    if profile is not None:
        rows += [
            ("torch threads", "-", str(profile.torch_threads)),
            ("batch size", "-", str(profile.batch_size)),
            ("train memory budget", "-", f"{profile.train_memory_budget_mb} MB"),
            ("training speed", "-", _speed_text(profile)),
            ("role", "-", profile.role),
        ]
    widths = [max(len(r[i]) for r in rows) for i in (0, 1)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    lines.append(f"this machine's cpu: {machine.cpu or 'unknown'}; flags that matter for "
                 f"torch and onnxruntime: {flags} ({len(machine.flags)} flags in all)")
    if profile is not None:
        lines.insert(1, f"{'':<{widths[0]}}  {'':<{widths[1]}}  ({profile.description})")
    if profile is None:
        pass  # the command says so on stderr
    elif profile.generic:
        lines.append(f"{profile.name} is matched on the architecture alone: its figures are "
                     "planning defaults, not this machine's. mpfl-edge keeps the coordinator's "
                     "batch size and torch's own thread count here unless --hardware is given.")
    else:
        lines.append(f"mpfl-edge applies {profile.label} here (threads, batch size, memory "
                     "guard); --hardware overrides it.")
    return "\n".join(lines)


def _speed_text(profile: Profile) -> str:
    if profile.train_gflops is None:
        return "not declared"
    return f"{profile.train_gflops:g} GFLOP/s sustained in training (declared estimate)"
