"""A stand-in for kaniko's executor on the development cluster, which runs no images:
reads its flags as kaniko does, checks the context has the Dockerfile and that it starts
FROM an image, runs no build, and "pushes" the destination to the cluster's registry
folder (a file named by the image, in the folder --fake-registry or FAKE_REGISTRY
names), printing kaniko's own kind of lines. A Dockerfile with `RUN false` fails as a
build step would."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv if "=" in arg)
    context = flags.get("context", "").removeprefix("dir://")
    dockerfile = flags.get("dockerfile") or os.path.join(context, "Dockerfile")
    destination = flags.get("destination", "")
    if not os.path.isdir(context):
        print(f"error resolving dockerfile path: no context at {context}")
        return 1
    try:
        with open(dockerfile, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as exc:
        print(f"error resolving dockerfile path: {exc}")
        return 1
    if not lines or not lines[0].upper().startswith("FROM "):
        print("error building image: dockerfile must begin with FROM")
        return 1
    print(f"INFO Retrieving image manifest {lines[0].split()[1]}")
    for line in lines[1:]:
        print(f"INFO {line}")
        if line.upper() == "RUN FALSE":
            print("error building image: error building stage: command failed: exit status 1")
            return 1
    if not destination:
        print("error: --destination is required to push")
        return 1
    registry = flags.get("fake-registry") or os.environ["FAKE_REGISTRY"]
    with open(os.path.join(registry, destination.replace("/", "%")), "w") as f:
        f.write("\n".join(lines))
    print(f"INFO Pushing image to {destination}")
    print(f"INFO Pushed {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
