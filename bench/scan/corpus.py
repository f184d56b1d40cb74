#!/usr/bin/env python3
"""Benchmark inputs for bench/scan/run.sh, generated at run time (no key-shaped literal is kept
in the repository), and the recall scorer.

    corpus.py recall DIR          12 key shapes, one file each (DIR/plain) and all in one notebook
                                  (DIR/notebook); writes DIR/truth.json
    corpus.py history DIR N       a git repository with N commits of real Python source, keys
                                  added and deleted along the way
    corpus.py score TOOL REPORT TRUTH [plain|notebook]
                                  prints how many of the planted keys TOOL's REPORT names
"""
import json
import os
import random
import re
import secrets
import string
import subprocess
import sys
import sysconfig

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B32 = string.ascii_uppercase + "234567"
MARKER = "T3Bl" + "bkFJ"


def rand(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def aws_secret():
    while True:
        s = rand(40, B64)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def shapes():
    """Twelve key shapes, each as the lines a developer would write."""
    aws_id = "AKIA" + rand(16, B32)
    return [
        ("openai", [f'OPENAI_API_KEY = "sk-proj-{rand(74, URLSAFE)}{MARKER}{rand(74, URLSAFE)}"']),
        ("anthropic", [f'client = anthropic.Anthropic(api_key="sk-ant-api03-{rand(93, URLSAFE)}AA")']),
        ("aws", [f'aws_access_key_id = "{aws_id}"', f'aws_secret_access_key = "{aws_secret()}"']),
        ("google", [f'GEMINI_API_KEY = "AIza{rand(35, URLSAFE)}"']),
        ("azure", [f'AZURE_OPENAI_API_KEY = "{rand(32, HEX)}"']),
        ("groq", [f'GROQ_API_KEY = "gsk_{rand(52)}"']),
        ("huggingface", [f'HF_TOKEN = "hf_{rand(34)}"']),
        ("replicate", [f'REPLICATE_API_TOKEN = "r8_{rand(37)}"']),
        ("perplexity", [f'PPLX_API_KEY = "pplx-{rand(48)}"']),
        ("xai", [f'XAI_API_KEY = "xai-{rand(80)}"']),
        ("openrouter", [f'OPENROUTER_API_KEY = "sk-or-v1-{rand(64, HEX)}"']),
        ("github", [f'GITHUB_TOKEN = "ghp_{rand(36)}"']),
    ]


def recall_corpus(d):
    os.makedirs(f"{d}/plain", exist_ok=True)
    os.makedirs(f"{d}/notebook", exist_ok=True)
    truth = {"plain": {}, "notebook": {}}
    for name, lines in shapes():
        path = f"{d}/plain/{name}_config.py"
        with open(path, "w") as f:
            f.write("import os\n\n" + "\n".join(lines) + "\n")
        truth["plain"][name] = {"file": os.path.abspath(path), "lines": [3 + i for i in range(len(lines))],
                                "secrets": [l.split('"')[-2] for l in lines]}
    cells, nb_truth = [], {}
    keys = shapes()
    for name, lines in keys:
        cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                      "source": [l + "\n" for l in lines]})
    text = json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1)
    path = os.path.abspath(f"{d}/notebook/keys.ipynb")
    with open(path, "w") as f:
        f.write(text + "\n")
    file_lines = text.split("\n")
    for name, lines in keys:
        secrets_ = [l.split('"')[-2] for l in lines]
        nums = [i + 1 for i, fl in enumerate(file_lines) if any(s in fl for s in secrets_)]
        nb_truth[name] = {"file": path, "lines": nums, "secrets": secrets_}
    truth["notebook"] = nb_truth
    with open(f"{d}/truth.json", "w") as f:
        json.dump(truth, f)


def history_repo(d, n):
    """N commits over real Python source: each changes a few files; now and then a key is added
    to a config file and removed again a few commits later."""
    rng = random.Random(7)
    stdlib = sysconfig.get_paths()["stdlib"]
    sources = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "__pycache__", "test"))
        for fn in sorted(files):
            if fn.endswith(".py"):
                sources.append(os.path.join(root, fn))
    sources = sources[:1200]
    os.makedirs(d, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", d], check=True)
    fi = subprocess.Popen(["git", "-C", d, "fast-import", "--quiet"], stdin=subprocess.PIPE)
    out = fi.stdin

    def data(b):
        out.write(b"data %d\n" % len(b) + b + b"\n")

    files = {}
    for p in sources:
        with open(p, "rb") as f:
            files[os.path.relpath(p, stdlib)] = f.read().split(b"\n")
    names = sorted(files)
    t = 1_600_000_000
    planted = []
    shape_list = shapes()
    for i in range(n):
        t += 3600
        out.write(b"commit refs/heads/main\n")
        out.write(b"committer Bench <bench@example.test> %d +0000\n" % t)
        data(b"change %d" % i)
        if i == 0:
            changed = names
        else:
            changed = rng.sample(names, rng.randint(1, 4))
            for name in changed:
                lines = files[name]
                at = rng.randrange(len(lines))
                lines[at:at + rng.randint(0, 3)] = [b"# edit %d: %s" % (i, rand(40).encode())
                                                    for _ in range(rng.randint(1, 4))]
        for name in changed:
            out.write(b"M 100644 inline %s\n" % name.encode())
            data(b"\n".join(files[name]))
        # Every n/12 commits a key is committed in settings_local.py and deleted two later.
        k = i * len(shape_list) // n if n else 0
        if i > 0 and i % max(1, n // len(shape_list)) == 0 and k < len(shape_list):
            name, lines = shape_list[k]
            body = ("\n".join(lines) + "\n").encode()
            out.write(b"M 100644 inline settings_local.py\n")
            data(body)
            planted.append(name)
        elif i > 2 and (i - 2) % max(1, n // len(shape_list)) == 0:
            out.write(b"D settings_local.py\n")
        out.write(b"\n")
    out.close()
    fi.wait()
    subprocess.run(["git", "-C", d, "checkout", "-q", "main"], check=True)
    subprocess.run(["git", "-C", d, "gc", "-q", "--aggressive"], check=True)
    print(f"{n} commits, keys planted in history: {', '.join(planted)}")


def reported_lines(tool, report):
    """(file basename, line) pairs a tool reported."""
    text = open(report, encoding="utf-8", errors="replace").read()
    found = set()
    if tool == "gitleaks":
        for f in json.loads(text or "[]"):
            found.add((os.path.basename(f["File"]), f["StartLine"]))
    elif tool == "betterleaks":
        for f in json.loads(text or '{"findings": []}').get("findings") or []:
            loc = f.get("location", {})
            found.add((os.path.basename(loc.get("path", "")), loc.get("start_line")))
    elif tool == "kingfisher":
        for f in json.loads(text or '{"findings": []}').get("findings", []):
            g = f.get("finding", {})
            if g.get("path") and g.get("line"):
                found.add((os.path.basename(g["path"]), int(g["line"])))
    elif tool == "detect-secrets":
        for path, items in json.loads(text)["results"].items():
            for it in items:
                found.add((os.path.basename(path), it["line_number"]))
    elif tool == "airlock":
        for f in json.loads(text)["findings"]:
            for l in f["locations"]:
                found.add((os.path.basename(l["path"]), l["line"]))
    elif tool == "ripgrep":
        for line in text.splitlines():
            m = re.match(r"(.*?):(\d+):", line)
            if m:
                found.add((os.path.basename(m.group(1)), int(m.group(2))))
    return found


def score(tool, report, truth_path, part):
    truth = json.load(open(truth_path))[part]
    found = reported_lines(tool, report)
    hit = [n for n, t in truth.items() if any((os.path.basename(t["file"]), l) in found for l in t["lines"])]
    print(f"{len(hit)}/{len(truth)}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "recall":
        recall_corpus(sys.argv[2])
    elif cmd == "history":
        history_repo(sys.argv[2], int(sys.argv[3]))
    elif cmd == "score":
        score(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(__doc__)
