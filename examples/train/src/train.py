"""Fit y = a*x + b to the points by gradient descent; standard library only."""

import argparse
import csv
import json
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--model", required=True)
args = parser.parse_args()

with open(args.data, newline="") as f:
    points = [(float(row["x"]), float(row["y"])) for row in csv.DictReader(f)]

a = b = 0.0
for epoch in range(1, args.epochs + 1):
    for _ in range(200):
        da = sum((a * x + b - y) * x for x, y in points) / len(points)
        db = sum(a * x + b - y for x, y in points) / len(points)
        a, b = a - 0.01 * da, b - 0.01 * db
    loss = sum((a * x + b - y) ** 2 for x, y in points) / len(points)
    print(f"epoch {epoch}: loss {loss:.4f}")

pathlib.Path(args.model, "model.json").write_text(json.dumps({"a": a, "b": b}))
pathlib.Path("outputs").mkdir(exist_ok=True)
pathlib.Path("outputs", "metrics.json").write_text(json.dumps({"loss": loss}))
print(f"y = {a:.3f} * x + {b:.3f}")
