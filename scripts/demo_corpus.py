#!/usr/bin/env python3
"""Assembles the demo corpus from English text shipped in Debian packages, as JSONL.

    python3 scripts/demo_corpus.py OUT_DIR

Sources: every fortune of the `fortunes` package (one document each; the ASCII-art files
are left out) and the King James Bible of `bible-kjv` (one document per chapter, printed by
its `bible` program). Writes OUT_DIR/demo.jsonl and OUT_DIR/demo-heldout.jsonl: one in 20
documents, picked by a hash of its id, is held out for evaluation. Lines are
{"id", "source", "text"}; the order is fixed, so the files are the same on every machine.
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
SKIPPED_FORTUNE_FILES = {"art", "ascii-art"}


def fortunes():
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix in {".dat", ".u8"} or path.is_dir() or path.name in SKIPPED_FORTUNE_FILES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, entry in enumerate(text.split("\n%\n")):
            entry = entry.strip("%\n")
            if entry.strip():
                yield {"id": f"fortunes/{path.name}/{i}", "source": f"fortunes/{path.name}", "text": entry}


def bible_chapters():
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapter, verses = None, []
    for line in out.splitlines():
        ref, _, verse = line.partition(" ")
        if not verse:
            continue
        this_chapter = ref.split(":")[0]
        if this_chapter != chapter and verses:
            yield {"id": f"kjv/{chapter}", "source": "bible-kjv", "text": " ".join(verses)}
            verses = []
        chapter = this_chapter
        verses.append(verse)
    if verses:
        yield {"id": f"kjv/{chapter}", "source": "bible-kjv", "text": " ".join(verses)}


def held_out(doc_id):
    return hashlib.sha256(doc_id.encode()).digest()[0] % 20 == 0


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "heldout": 0}
    tmp_train, tmp_held = out_dir / "demo.jsonl.tmp", out_dir / "demo-heldout.jsonl.tmp"
    with open(tmp_train, "w") as train, open(tmp_held, "w") as held:
        for doc in list(fortunes()) + list(bible_chapters()):
            split = "heldout" if held_out(doc["id"]) else "train"
            (held if split == "heldout" else train).write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts[split] += 1
    # Rename only when complete, so an interrupted run never leaves a short corpus behind.
    tmp_train.rename(out_dir / "demo.jsonl")
    tmp_held.rename(out_dir / "demo-heldout.jsonl")
    print(f"demo corpus: {counts['train']} documents, {counts['heldout']} held out, in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
