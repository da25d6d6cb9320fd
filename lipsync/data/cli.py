"""``lipsync data``: the parser (stdlib only) and the ``fetch`` / ``list`` commands."""

from __future__ import annotations

import sys
from collections import defaultdict


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data", help="real face media by manifest: fetch the faces-kit into a cache, list what is there",
        description="The faces-kit (real portraits, talking clips, speech) is referenced by a manifest "
                    "(lipsync/assets/data/faces-kit.csv: source repository, commit, path, sha256, licence, "
                    "identity, train/heldout split), never shipped. `fetch` copies it from a mirror folder or "
                    "downloads it from its public sources into a cache, checking every sha256.")
    dsub = p.add_subparsers(dest="data_command", metavar="<action>")

    def common(q):
        q.add_argument("--manifest", default=None, help="manifest CSV (default: the one in the package)")
        q.add_argument("--cache", default=None,
                       help="cache folder (default: $LIPSYNC_DATA_CACHE or ~/.cache/lipsync/faces-kit)")
        q.add_argument("--kind", nargs="+", default=None,
                       choices=("portrait", "talking", "speech", "driving", "stylized"), help="only these kinds")
        q.add_argument("--split", nargs="+", default=None, choices=("train", "heldout"), help="only these splits")
        q.add_argument("--identity", nargs="+", default=None, help="only these people (manifest identities)")

    f = dsub.add_parser("fetch", help="copy (--mirror) or download the manifest's files into the cache",
                        description="Copy each selected file from --mirror DIR (or $LIPSYNC_DATA_MIRROR), or "
                                    "without a mirror download it from its public source (raw file at "
                                    "source_repo@commit/source_path). Every file's sha256 is checked; files "
                                    "already cached with the right hash are skipped. Derived files (remuxed "
                                    "clips, wav->FLAC) exist only in the kit and need a mirror.")
    common(f)
    f.add_argument("--mirror", default=None, metavar="DIR",
                   help="a local copy of the faces-kit, e.g. ../shared/data/faces-kit")
    f.add_argument("--base-url", "--base_url", dest="base_url", default=None,
                   help="where to download from (default: $LIPSYNC_DATA_BASE_URL or https://raw.githubusercontent.com)")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds per download before giving up")
    f.add_argument("--quiet", "-q", action="store_true", help="print failures and the summary only")
    f.add_argument("--link", default=None, metavar="DIR",
                   help="also put a symbolic link to each fetched file in DIR (flat, by file name): an input "
                        "folder for `lipsync preprocess` or `lipsync synth --faces`")
    f.set_defaults(func=run_fetch)

    ls = dsub.add_parser("list", aliases=["show"], help="what the manifest holds per kind and split, and what is cached",
                         description="Counts, sizes and cached files per kind and split; --files lists each file.")
    common(ls)
    ls.add_argument("--files", action="store_true", help="one line per file: split, kind, identity, cached, file")
    ls.add_argument("--verify", action="store_true", help="hash cached files (default: size check only)")
    ls.set_defaults(func=run_list)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_fetch(args) -> int:
    from lipsync.data import kit

    def progress(status, entry, detail):
        if status == "failed":
            print(f"FAILED  {entry.file}: {detail}", file=sys.stderr)
        elif not args.quiet:
            print(f"{status:<10} {entry.file}")

    report = kit.fetch(manifest=args.manifest, mirror=args.mirror, cache=args.cache, kind=args.kind,
                       split=args.split, identity=args.identity, base_url=args.base_url, timeout=args.timeout,
                       strict=False, progress=progress)
    cache = args.cache or kit.default_cache()
    print(f"{report.summary()} (cache: {cache})")
    if args.link:
        kit.link(report.paths, args.link)
        print(f"{len(report.paths)} link(s) in {args.link}")
    return 1 if report.failures else 0


def run_list(args) -> int:
    from lipsync.data import kit

    entries = kit.select(kit.load_manifest(args.manifest), kind=args.kind, split=args.split,
                         identity=args.identity)
    cache = args.cache or kit.default_cache()
    groups = defaultdict(lambda: [0, 0, 0, set()])   # files, bytes, cached, identities
    for e in entries:
        is_cached = kit.cached(e, cache, verify=args.verify)
        g = groups[(e.kind, e.split)]
        g[0] += 1
        g[1] += e.bytes
        g[2] += is_cached
        g[3].add(e.identity)
        if args.files:
            print(f"{e.split:<8} {e.kind:<9} {e.identity:<32} {'cached' if is_cached else '-':<7} {e.file}")
    if args.files:
        print()
    print(f"manifest: {args.manifest or kit.MANIFEST}")
    print(f"cache:    {cache}")
    print(f"{'kind':<9} {'split':<8} {'files':>6} {'people':>7} {'MB':>7} {'cached':>7}")
    order = {k: i for i, k in enumerate(kit.KINDS)}
    for (kind, split), (n, size, n_cached, ids) in sorted(groups.items(),
                                                           key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        print(f"{kind:<9} {split:<8} {n:>6} {len(ids):>7} {size / 1e6:>7.1f} {n_cached:>7}")
    total = sum(g[0] for g in groups.values())
    print(f"{'total':<18} {total:>6} {len({e.identity for e in entries}):>7} "
          f"{sum(g[1] for g in groups.values()) / 1e6:>7.1f} {sum(g[2] for g in groups.values()):>7}")
    return 0
