"""Command line: ``python -m ptreclaim SUBCOMMAND ...``.

* ``compare SCRIPT`` runs an operation script (docs/scripts.md) on the host kernel and in
  the simulator, configured like the host, and prints both side by side; the exit status
  is 0 when they agree on every operation, 1 when they differ, 2 on an error.
  ``compare --random N [--seed S] [--profile P]`` compares a generated script instead
  (``P``: ``default``, ``fork``, ``thp-fork``, ``file``: ``ptreclaim.randscript.PROFILES``).
* ``run SCRIPT [--on kernel|sim]`` prints one side's results only (e.g. for a script the
  simulator cannot run yet).
* ``host`` prints the host configuration the simulator is matched to.
* ``demo`` runs the seed patch's experiment with and without PT reclaim (ptreclaim.demo).

Subcommands are argparse subparsers: add one with a ``_add_NAME(sub)`` function that
registers its parser and sets ``func``, and list it in ``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import script as S

_SHOWN = ("VmPTE", "RssAnon", "RssShmem", "VmSize")  # the columns; other fields print on a diff
_SHOWN_FILES = ("VmPTE", "RssAnon", "RssFile", "RssShmem", "VmSize")  # scripts with `file` lines


def _shown(ops):
    return _SHOWN_FILES if any(isinstance(op, S.CreateFile) for op in ops) else _SHOWN
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """An error to report in one line and exit with EXIT_ERROR."""


# --- inputs ---------------------------------------------------------------------------------

def random_script(n, seed, profile="default"):
    """The hook for generated scripts: ``ptreclaim.randscript.generate(n, seed, config)``.

    It returns a list of ``ptreclaim.script`` operations (or script text) of ``n``
    operations, the same for the same ``seed`` and ``profile`` (a name of
    ``randscript.PROFILES``; ``default`` is ``DEFAULT_CONFIG``): the scripts of
    ``tests/test_random_vs_kernel.py`` (see ``docs/validation.md``).
    """
    name = f"{__package__}.randscript"
    try:
        randscript = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise CliError(
            f"--random needs the script generator {name}.generate(n, seed), which does not exist yet"
        ) from None
    if profile == "default":
        ops = randscript.generate(n, seed)
    else:
        profiles = getattr(randscript, "PROFILES", {})
        if profile not in profiles:
            raise CliError(f"unknown --profile {profile!r} (one of {', '.join(profiles) or 'default'})")
        try:
            ops = randscript.generate(n, seed, profiles[profile])
        except ValueError as e:  # e.g. no simulator with fork() to draw a fork script with
            raise CliError(f"--profile {profile}: {e}") from None
    return S.parse(ops) if isinstance(ops, str) else list(ops)


def _load_ops(args):
    if args.random is not None:
        if args.script is not None:
            raise CliError("give a SCRIPT or --random N, not both")
        if args.seed is None:
            args.seed = int.from_bytes(os.urandom(4), "little")
        profile = getattr(args, "profile", "default")
        print(f"random script: {args.random} operations, --seed {args.seed}"
              + (f" --profile {profile}" if profile != "default" else ""))
        return random_script(args.random, args.seed, profile)
    if args.script is None:
        raise CliError("give a SCRIPT file ('-' for standard input) or --random N")
    if args.script == "-":
        return S.parse(sys.stdin.read(), filename="<stdin>")
    try:
        return S.load(args.script)
    except OSError as e:
        raise CliError(f"cannot read {args.script}: {e.strerror}") from None


def _int(text):
    return int(text, 0)


def _simulator_class(impl):
    """``MM`` of the chosen implementation; a missing build is a one-line error."""
    try:
        if impl == "core":
            from ._core import MM
        elif impl == "reference":
            from ._reference import MM
        else:
            import ptreclaim
            MM = ptreclaim.MM
    except (ImportError, AttributeError) as e:
        raise CliError(f"the simulator ({impl}) is not available: {e}") from None
    return MM


def _host_config():
    from . import kernel
    try:
        return kernel.host_config()
    except kernel.HostUnsupported as e:
        raise CliError(str(e)) from None


def _run_kernel(ops, args):
    from . import kernel
    try:
        return kernel.run(ops, base=args.base, timeout=args.timeout)
    except (kernel.HostUnsupported, kernel.KernelRunError, ImportError) as e:
        raise CliError(f"host kernel: {e}") from None


def _run_sim(ops, args, config):
    MM = _simulator_class(args.impl)
    mm = MM(pt_reclaim=config["pt_reclaim"], thp=config["thp"])
    try:
        return S.run(ops, mm, base=args.base)
    except (S.ForkUnsupported, S.FilesUnsupported) as e:
        raise CliError(f"simulator: {e}") from None


# --- output ---------------------------------------------------------------------------------

def _outcome(r, base):
    """errno, plus where a signal hit or where mmap put the mapping if not at ADDR."""
    text = S.errno_name(r.errno)
    if r.fault is not None:
        text += "@" + S.format_number(r.fault - base)
    if r.ret is not None and r.ret != base + r.op.addr:
        text += "@" + S.format_number(r.ret - base)
    return text


def _fmt(v):
    return "-" if v is None else str(v)


def _print_results(results, base, out):
    shown = _shown(r.op for r in results)
    opw = max([len("operation")] + [len(str(r.op)) for r in results])
    ew = max([len("errno")] + [len(_outcome(r, base)) for r in results])
    print(f"{'line':>5}  {'operation':<{opw}} {'errno':<{ew}}" + "".join(f" {f:>9}" for f in shown)
          + "  depth", file=out)
    for r in results:
        d = r.delta
        print(f"{r.op.lineno:>5}  {str(r.op):<{opw}} {_outcome(r, base):<{ew}}"
              + "".join(f" {_fmt(d[f]):>9}" for f in shown) + f"  {r.depth:>5}", file=out)


def _compare_table(ops, kres, sres, base, out):
    """Print kernel vs simulator per operation; return the number of operations that differ."""
    _SHOWN = _shown(ops)
    rows = []
    for op, k, s in zip(ops, kres, sres):
        kd, sd = k.delta, s.delta
        rows.append((op, _outcome(k, base), _outcome(s, base), kd, sd))
    opw = max([len("operation")] + [len(str(r[0])) for r in rows])
    ew = max([len("kernel")] + [max(len(r[1]), len(r[2])) for r in rows])
    fw = max([len("kernel")] + [len(_fmt(r[3 + i][f])) for r in rows for i in (0, 1) for f in _SHOWN])

    def pair(k, s, w):
        return f" {k:>{w}} {s:>{w}}" + ("*" if k != s else " ")

    print(f"{'line':>5}  {'operation':<{opw}}" + f" {'errno':^{2 * ew + 1}} "
          + "".join(f" {f:^{2 * fw + 1}} " for f in _SHOWN), file=out)
    print(f"{'':>5}  {'':<{opw}}" + pair("kernel", "sim", ew).rstrip("*")
          + "".join(pair("kernel", "sim", fw).rstrip("*") for _ in _SHOWN), file=out)
    ndiff = 0
    for op, ko, so, kd, sd in rows:
        diffs = [f for f in S.FIELDS if kd[f] != sd[f]]
        bad = ko != so or bool(diffs)
        ndiff += bad
        line = f"{op.lineno:>5}  {str(op):<{opw}}" + pair(ko, so, ew)
        line += "".join(pair(_fmt(kd[f]), _fmt(sd[f]), fw) for f in _SHOWN)
        print(line + ("  <<" if bad else ""), file=out)
        hidden = [f for f in diffs if f not in _SHOWN]
        if hidden:
            print(f"{'':>7}also differs: "
                  + ", ".join(f"{f} kernel {_fmt(kd[f])} sim {_fmt(sd[f])}" for f in hidden), file=out)
    return ndiff


# --- subcommands ----------------------------------------------------------------------------

def _cmd_compare(args):
    ops = _load_ops(args)
    config = _host_config()
    # Fail before the kernel run if the simulator cannot run the script at all.
    MM = _simulator_class(args.impl)
    forks = [op for op in ops if isinstance(op, (S.Fork, S.ForkP))]
    if forks and not hasattr(MM, "fork"):
        raise CliError(f"line {forks[0].lineno}: the simulator has no fork() yet; "
                       "'run --on kernel' runs this script on the host kernel alone")
    files = [op for op in ops if isinstance(op, S.CreateFile)]
    if files and not hasattr(getattr(MM(), "machine", None), "create_file"):
        raise CliError(f"line {files[0].lineno}: the simulator has no files (Machine.create_file) "
                       "yet; 'run --on kernel' runs this script on the host kernel alone")
    kres = _run_kernel(ops, args)
    sres = _run_sim(ops, args, config)
    print(f"host: Linux {config['kernel']} {config['machine']}, pt_reclaim={config['pt_reclaim']}, "
          f"thp={config['thp']}; simulator: {MM.__module__}.MM(pt_reclaim={config['pt_reclaim']}, "
          f"thp={config['thp']!r})")
    print(f"base {args.base:#x}; values are kB since the script started (status - baseline); "
          "* marks a difference")
    ndiff = _compare_table(ops, kres, sres, args.base, sys.stdout)
    if ndiff:
        print(f"DIFFERENT: {ndiff} of {len(ops)} operations differ")
        return EXIT_DIFFERENT
    print(f"SAME: kernel and simulator agree on all {len(ops)} operations")
    return EXIT_SAME


def _cmd_run(args):
    ops = _load_ops(args)
    if args.on == "kernel":
        res = _run_kernel(ops, args)
    else:
        config = {"pt_reclaim": args.pt_reclaim, "thp": args.thp}
        if None in config.values():
            host = _host_config()
            config = {k: host[k] if v is None else v for k, v in config.items()}
        res = _run_sim(ops, args, config)
    print(f"{args.on}, base {args.base:#x}; values are kB since the script started")
    _print_results(res, args.base, sys.stdout)
    return EXIT_SAME


def _cmd_host(args):
    for key, value in _host_config().items():
        print(f"{key}: {value}")
    return EXIT_SAME


def _script_args(p):
    p.add_argument("script", nargs="?", help="operation script (docs/scripts.md); '-' reads standard input")
    p.add_argument("--random", type=int, metavar="N", help="use a generated script of N operations")
    p.add_argument("--seed", type=int, metavar="S", help="seed of --random (default: a fresh one, printed)")
    p.add_argument("--profile", default="default", metavar="P",
                   help="what --random draws: default, fork (one fork/forkp), thp-fork (one fork/forkp "
                        "and MADV_HUGEPAGE/NOHUGEPAGE with THP faults), file (one fork/forkp and file "
                        "mappings), shmem-thp (file profile with memfds and shared memory in 2 MiB "
                        "spans, and MADV_COLLAPSE); see docs/validation.md")
    p.add_argument("--base", type=_int, default=S.DEFAULT_BASE,
                   help=f"address ADDR 0 stands for (default {S.DEFAULT_BASE:#x})")
    p.add_argument("--impl", choices=("auto", "core", "reference"), default="auto",
                   help="simulator implementation (auto: what 'import ptreclaim' picks)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the kernel run may take")


def _add_compare(sub):
    p = sub.add_parser("compare", help="run a script on the host kernel and in the simulator, side by side")
    _script_args(p)
    p.set_defaults(func=_cmd_compare)


def _add_run(sub):
    p = sub.add_parser("run", help="run a script on one side and print its results")
    _script_args(p)
    p.add_argument("--on", choices=("kernel", "sim"), default="kernel")
    p.add_argument("--pt-reclaim", type=lambda t: t.lower() in ("1", "y", "yes", "true", "on"),
                   default=None, help="simulator: PT reclaim on or off (default: like the host)")
    p.add_argument("--thp", choices=("never", "madvise", "always"), default=None,
                   help="simulator: THP mode (default: like the host)")
    p.set_defaults(func=_cmd_run)


def _add_host(sub):
    p = sub.add_parser("host", help="print the host configuration (PT reclaim, THP)")
    p.set_defaults(func=_cmd_host)


def _add_demo(sub):
    from . import demo
    demo.add_parser(sub)


_SUBCOMMANDS = [_add_demo, _add_compare, _add_run, _add_host]


def build_parser():
    parser = argparse.ArgumentParser(prog="ptreclaim", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Entry point; returns the exit status (EXIT_SAME, EXIT_DIFFERENT or EXIT_ERROR)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, S.ScriptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
