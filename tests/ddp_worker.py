"""Run under torchrun by tests/test_training_ddp.py: training.pretrain.main with a loader that records, from the
pixels of each view it hands out, which slots this rank trained on (the store's images spell their slot index).
Writes DDP_RECORD_DIR/rankR.pid at start (for a test to signal one rank) and rankR.json at the end."""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipelines  # noqa: E402
from training import pretrain  # noqa: E402
from training_fixtures import decode_views  # noqa: E402

build = pipelines.build_loader
seen: list[list[int]] = []


class Spy:
    def __init__(self, inner):
        self.inner = inner
        self.sampler = inner.sampler

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, *args, **kwargs):
        self.inner.set_epoch(*args, **kwargs)

    def close(self):
        self.inner.close()

    def __iter__(self):
        for views in self.inner:  # (view1, view2, *small views)
            seen.append(decode_views(views[0]))
            yield views


pipelines.build_loader = lambda *a, **k: Spy(build(*a, **k))
out = Path(os.environ["DDP_RECORD_DIR"])
(out / f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
rc = pretrain.main(sys.argv[1:])
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({"rc": rc, "batches": seen}))
sys.exit(rc)
