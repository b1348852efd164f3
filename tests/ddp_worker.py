"""torchrun target of tests/test_distributed.py: ``efficientdet train`` with this script's
arguments, recording into the folder ``$EFFICIENTDET_TEST_LOG`` what each rank does:
``ids_rank{R}.txt`` the training image ids it loads (one per line, in order) and
``commits_rank{R}.txt`` one line per checkpoint commit (last.pt/best.pt) it makes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    from efficientdet import cli
    from efficientdet.data.dataset import DetectionDataset
    from efficientdet.engine import checkpoint

    log_dir = Path(os.environ["EFFICIENTDET_TEST_LOG"])
    rank = os.environ.get("RANK", "0")
    load = DetectionDataset.__getitem__
    commit = checkpoint.commit

    def logged_load(self: DetectionDataset, index: int) -> Any:
        image, target = load(self, index)
        if self.train:  # validation images (rank 0 evaluates) are not training data
            with open(log_dir / f"ids_rank{rank}.txt", "a") as f:
                f.write(f"{target['image_id']}\n")
        return image, target

    def logged_commit(run_dir: Any, *args: Any, **kwargs: Any) -> Any:
        with open(log_dir / f"commits_rank{rank}.txt", "a") as f:
            f.write(f"{run_dir}\n")
        return commit(run_dir, *args, **kwargs)

    DetectionDataset.__getitem__ = logged_load  # type: ignore[method-assign]
    checkpoint.commit = logged_commit
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
