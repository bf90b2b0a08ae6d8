"""The tests' view of the lake through the engines users query it with. Nothing here shares
code with the loader: each engine reads the Delta tables (or the plain Parquet files) its own way.

    lake.py ENGINE TABLE [COLUMN ...]   -> JSON {"rows": n, "columns": {COLUMN: [text, ...]},
                                                 "schema": {name: type}, "files": n}

ENGINE is one of:
    deltalake   the `deltalake` package (delta-rs): DeltaTable(TABLE).to_pyarrow_table()
    polars      polars.read_delta(TABLE)
    spark       Spark with delta-spark: spark.read.format("delta").load(TABLE)
    spark-parquet  Spark reading the table's live files (from deltalake's file list) as plain
                Parquet, no Delta log: the files must be readable on their own
    duckdb      DuckDB reading the table's live files (from deltalake's file list) as Parquet,
                hive-partitioned (its `delta` extension is a download this machine cannot make)

TABLE is a local directory or s3://bucket/prefix; for a bucket, S3_ENDPOINT names the server
(moto: any key is accepted). Several tables can be read in one Spark session (its start is the
slow part): ENGINE spark-batch, then lines of JSON [engine, table, [columns]] on stdin, one JSON
answer per line on stdout.
"""

import json
import os
import sys


def storage_options():
    endpoint = os.environ.get("S3_ENDPOINT")
    if not endpoint:
        return None
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def text(value):
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        # Timestamps as UTC RFC 3339, microseconds, whatever the engine's own rendering.
        if getattr(value, "tzinfo", None) is not None:
            import datetime

            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    return str(value)


def answer_from_arrow(table, columns, files):
    return {
        "rows": table.num_rows,
        "columns": {c: [text(v) for v in table.column(c).to_pylist()] for c in columns},
        "schema": {f.name: str(f.type) for f in table.schema},
        "files": files,
    }


def read_deltalake(table, columns, version=None):
    from deltalake import DeltaTable

    dt = DeltaTable(table, version=version, storage_options=storage_options())
    return answer_from_arrow(dt.to_pyarrow_table(), columns, len(dt.file_uris()))


def read_polars(table, columns):
    import polars as pl

    df = pl.read_delta(table, storage_options=storage_options())
    out = {
        "rows": df.height,
        "columns": {c: [text(v) for v in df.get_column(c).to_list()] for c in columns},
        "schema": {name: str(dtype) for name, dtype in df.schema.items()},
        "files": None,
    }
    return out


def read_duckdb(table, columns):
    import duckdb
    from deltalake import DeltaTable

    files = DeltaTable(table, storage_options=storage_options()).file_uris()
    con = duckdb.connect()
    if not files:
        return {"rows": 0, "columns": {c: [] for c in columns}, "schema": {}, "files": 0}
    rel = con.read_parquet(files, hive_partitioning=True)
    arrow = rel.arrow()
    if hasattr(arrow, "read_all"):
        arrow = arrow.read_all()
    return answer_from_arrow(arrow, columns, len(files))


SPARK = None


def spark():
    global SPARK
    if SPARK is None:
        from delta import configure_spark_with_delta_pip
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master("local[1]")
            .appName("lake-test")
            .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
            .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.databricks.delta.snapshotPartitions", "1")
            .config("spark.driver.memory", "1g")
        )
        SPARK = configure_spark_with_delta_pip(builder).getOrCreate()
        SPARK.sparkContext.setLogLevel("ERROR")
    return SPARK


def read_spark(table, columns, plain=False):
    s = spark()
    if plain:
        from deltalake import DeltaTable

        paths = DeltaTable(table, storage_options=storage_options()).file_uris()
        if not paths:
            return {"rows": 0, "columns": {c: [] for c in columns}, "schema": {}, "files": 0}
        df = s.read.option("basePath", table).parquet(*paths)
        files = len(paths)
    else:
        df = s.read.format("delta").load(table)
        files = len(df.inputFiles())
    rows = df.select(*columns).collect() if columns else []
    return {
        "rows": df.count(),
        "columns": {c: [text(r[c]) for r in rows] for c in columns},
        "schema": {f.name: f.dataType.simpleString() for f in df.schema.fields},
        "files": files,
    }


def read(engine, table, columns):
    if engine == "deltalake":
        return read_deltalake(table, columns)
    if engine.startswith("deltalake@"):
        # Time travel: the table as it was at that version.
        return read_deltalake(table, columns, int(engine.split("@", 1)[1]))
    if engine == "polars":
        return read_polars(table, columns)
    if engine == "duckdb":
        return read_duckdb(table, columns)
    if engine == "spark":
        return read_spark(table, columns)
    if engine == "spark-parquet":
        return read_spark(table, columns, plain=True)
    raise SystemExit(f"unknown engine {engine}")


def main(argv):
    if argv[0] == "spark-batch":
        for line in sys.stdin:
            if line.strip():
                engine, table, columns = json.loads(line)
                print(json.dumps(read(engine, table, columns)), flush=True)
        return
    json.dump(read(argv[0], argv[1], argv[2:]), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    # The answer is out: skip the interpreter's teardown, where deltalake's runtime can abort
    # the process ("terminate called without an active exception") after a bucket read.
    os._exit(0)
