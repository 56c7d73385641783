"""Extract triples from a whole corpus with a trained model: Ray Data, an actor pool of extractors.

After the main job (ROOT=runs/demo), on the demo test sentences as a corpus:
    python jobs/extract.py --root runs/demo --input tkre/data/demo/test.jsonl \
        --output runs/demo-triples
On a Ray cluster, a folder of files on S3, 1 to 8 GPU actors:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/extract.py --root s3://bucket/tkre/run1 --input s3://bucket/corpus \
        --output s3://bucket/triples --num-gpus 1 --min-actors 1 --max-actors 8 \
        --block-size 2000 --batch-size 256

Input: a .jsonl (the text in --text-field), .parquet (a string column --text-field) or .txt (a
document a line) file, or a folder of them. A bad record is a one-line error naming the file,
the line (row) and the field, before any extraction. Writes OUTPUT/triples/ and
OUTPUT/documents/ (Parquet, one file per block of --block-size documents), OUTPUT/_job.json and
OUTPUT/_summary.json (documents, triples, wall time, documents/s). The same command again, after
a crash or Ctrl-C, extracts only the blocks missing (tkre.extract.batch).
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import ExtractJobConfig
from tkre.extract.batch import run_extract

if __name__ == "__main__":
    sys.exit(run_job(ExtractJobConfig, run_extract, description=__doc__))
