"""Class-data sharing training run for the export's driver, at image build.

The export's fixed cost is mostly JVM start-up: loading and verifying some ten thousand classes
of Spark, Delta and Hadoop before a row moves. This run does what an export does (a
SparkContext with Delta's extension, a DataFrame of readings partitioned by year/month/day
written with replaceWhere and read back, a Delta log replayed) so that the JVM, started with
-XX:ArchiveClassesAtExit, writes the classes it loaded into an archive that each export's driver
maps instead of loading them again (see docker/spark/Dockerfile). No database or lake is needed:
the table lives in a temporary folder.
"""

import sys
import tempfile

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

conf = (SparkConf().setMaster("local[2]").setAppName("labctl-cds-training")
        .set("spark.ui.enabled", "false")
        .set("spark.sql.shuffle.partitions", "2")
        .set("spark.databricks.delta.snapshotPartitions", "2")
        .set("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .set("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .set("spark.sql.session.timeZone", "UTC"))
sc = SparkContext.getOrCreate(conf)
spark = SparkSession(sc)
# The lake's file system and the database's driver: their classes are loaded by name at run
# time, so load them here too.
for name in ("org.apache.hadoop.fs.azure.NativeAzureFileSystem",
             "org.apache.spark.sql.execution.datasources.jdbc.JDBCRelation"):
    sc._jvm.java.lang.Class.forName(name)

with tempfile.TemporaryDirectory() as folder:
    uri = f"file://{folder}/machine_sensors"
    readings = (spark.range(0, 20000)
                .select(F.concat(F.lit("CNC-"), (F.col("id") % 3).cast("string")).alias("machine_id"),
                        F.lit("CNC").alias("machine_type"),
                        F.lit("temperature").alias("sensor_type"),
                        (F.col("id") * 0.5).alias("value"),
                        F.lit("C").alias("unit"),
                        (F.lit(1_780_000_000) + F.col("id") * 5).cast("timestamp").alias("timestamp")))
    days = readings.select(F.year("timestamp").alias("year"), F.month("timestamp").alias("month"),
                           F.dayofmonth("timestamp").alias("day"))
    for _ in range(2):  # a create, then a replace of the same days: both commit paths
        (readings.withColumns({"year": F.year("timestamp"), "month": F.month("timestamp"),
                               "day": F.dayofmonth("timestamp")})
         .write.format("delta").partitionBy("year", "month", "day").mode("overwrite")
         .option("replaceWhere", "year = 2026").save(uri))
    back = spark.read.format("delta").load(uri)
    n = back.groupBy("year", "month", "day").agg(F.count("*").alias("n")).collect()
    assert sum(r["n"] for r in n) == 20000, n
    assert days.distinct().count() == len(n)
spark.stop()
print("cds training: done", file=sys.stderr)
