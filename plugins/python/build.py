"""Build Python plugins into WASM components with componentize-py.

    python build.py [DIR...]      (default: every plugin under plugins/python)

A plugin directory holds one manifest (<name>.toml: kind, entry) and its module `app.py`, which
defines `class WitWorld` with the world's exports. The component is written to the manifest's
`entry` through a temporary file, so a failed build never leaves half a component behind. The
world is the manifest's kind (`rule` or `flow`) of the WIT package in ../../wit, or in the
plugin's own wit/ when it has one (skeletons made by `gatehost plugin new` carry theirs). Needs
componentize-py on PATH or beside this interpreter (pip install componentize-py); works offline.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def componentize_py() -> str:
    beside = Path(sys.executable).parent / "componentize-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("componentize-py")
    if not found:
        sys.exit("componentize-py is not installed: pip install componentize-py==0.25.1")
    return found


def plugin_dirs(root: Path) -> list[Path]:
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if (d / "app.py").exists() and list(d.glob("*.toml")):
            found.append(d)
        else:
            found.extend(plugin_dirs(d))
    return found


def build(tool: str, d: Path) -> None:
    manifests = list(d.glob("*.toml"))
    if len(manifests) != 1:
        raise RuntimeError(f"{d}: expected one manifest (.toml), found {len(manifests)}")
    with open(manifests[0], "rb") as f:
        manifest = tomllib.load(f)
    kind, entry = manifest.get("kind"), manifest.get("entry")
    if kind not in ("rule", "flow"):
        raise RuntimeError(f"{manifests[0]}: kind must be rule or flow, got {kind!r}")
    if not entry:
        raise RuntimeError(f"{manifests[0]} has no entry")
    wit = d / "wit" if (d / "wit").is_dir() else HERE.parent.parent / "wit"
    out = (d / entry).resolve()
    tmp = out.with_name(out.name + ".partial")
    run = subprocess.run(
        [tool, "-d", str(wit), "-w", kind, "componentize", "-p", str(d), "app", "-o", str(tmp)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError((run.stderr or run.stdout).strip())
    os.replace(tmp, out)
    print(f"built {out} ({out.stat().st_size / 1048576:.1f} MiB) from app.py")


def main() -> int:
    tool = componentize_py()
    dirs = [Path(a).resolve() for a in sys.argv[1:]] or plugin_dirs(HERE)
    failed = 0
    for d in dirs:
        try:
            build(tool, d)
        except Exception as e:  # one plugin's failure does not stop the others
            failed += 1
            print(f"build of {d} failed: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
