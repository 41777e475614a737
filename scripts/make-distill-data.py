#!/usr/bin/env python3
"""Training text for the shipped MTP head: the documentation strings of the
Python standard library of the running CPython (PSF License 2.0, on every
machine with Python; no download). Deterministic for a Python version.

Usage: python3 scripts/make-distill-data.py OUT.txt
"""
import ast
import os
import sys
import sysconfig

out_path = sys.argv[1]
root = sysconfig.get_paths()["stdlib"]
skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo"}
docs = []
for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in skip)
    for name in sorted(filenames):
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(open(os.path.join(dirpath, name), encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= 200:
                    docs.append(d.strip())
with open(out_path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(docs) + "\n")
print(f"{len(docs)} docstrings, {sum(map(len, docs))} characters from {root} (Python {sys.version.split()[0]})")
