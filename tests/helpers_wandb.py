"""Reads what a Weights & Biases run wrote offline (WANDB_MODE=offline), with wandb's own
record definitions: tests check what was logged without any server."""

import json
from pathlib import Path

BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records
HEADER = 7  # the file's own header (":W&B", magic, version), then each record's (CRC, length, type)
FULL, LAST = 1, 4


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data, pos, payload = path.read_bytes(), HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < HEADER or kind == 0:  # block trailer or padding
            pos += left
            continue
        payload += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def offline_runs(root: Path) -> list[dict]:
    """Every offline run under root/wandb: its id, name, project, group, config and the
    history rows logged (without W&B's own underscore keys), oldest first."""
    import wandb

    wandb.teardown()  # finish() returns before wandb's service has written everything
    runs = []
    paths = Path(root).glob("wandb/offline-run-*/run-*.wandb")
    for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
        run = {"history": []}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, name=record.run.display_name,
                           project=record.run.project, group=record.run.run_group,
                           config={i.key: json.loads(i.value_json)
                                   for i in record.run.config.update if i.key != "_wandb"})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in record.history.item}
                run["history"].append({k: v for k, v in items.items() if not k.startswith("_")})
        runs.append(run)
    return runs
