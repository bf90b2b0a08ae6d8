"""The tests' independent view of an S3 bucket: boto3 (which moto brings) to make buckets, and
pyarrow's own S3 filesystem and Parquet reader to read what the loader wrote. Nothing here
shares code with the loader.

    s3.py ENDPOINT mkbucket BUCKET
    s3.py ENDPOINT read BUCKET PREFIX   -> JSON: every data object under PREFIX with its rows
                                          (live in its Delta table or not; the log is skipped)

Credentials are moto's: any key is accepted.
"""

import json
import sys
from urllib.parse import urlparse

import boto3
import pyarrow.fs
import pyarrow.parquet as pq

KEY, SECRET, REGION = "test", "test", "us-east-1"


def text(value):
    """A cell as text (ids are UUID text in the files already)."""
    if value is None:
        return None
    return str(value)


def main(endpoint, command, bucket, prefix=""):
    if command == "mkbucket":
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )
        s3.create_bucket(Bucket=bucket)
        return
    if command != "read":
        raise SystemExit(f"unknown command {command}")
    url = urlparse(endpoint)
    fs = pyarrow.fs.S3FileSystem(
        access_key=KEY,
        secret_key=SECRET,
        region=REGION,
        endpoint_override=url.netloc,
        scheme=url.scheme,
    )
    selector = pyarrow.fs.FileSelector(f"{bucket}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True)
    out = []
    for info in fs.get_file_info(selector):
        if info.type != pyarrow.fs.FileType.File or "/_delta_log/" in f"/{info.path}":
            # Data objects only: a Delta table's log (JSON commits, checkpoints) is read by the
            # engines (lake.py), not here.
            continue
        table = pq.read_table(info.path, filesystem=fs)
        meta = pq.read_metadata(info.path, filesystem=fs)
        columns = {}
        for name in ("raw_id", "user_index", "user_uuid", "kafka_offset", "email"):
            if name in table.column_names:
                columns[name] = [text(v) for v in table.column(name).to_pylist()]
        out.append(
            {
                "key": info.path[len(bucket) + 1 :],
                "size": info.size,
                "rows": table.num_rows,
                "compression": meta.row_group(0).column(0).compression if meta.num_row_groups else None,
                "columns": columns,
            }
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
