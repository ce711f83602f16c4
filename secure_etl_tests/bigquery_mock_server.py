"""A local stand-in for the BigQuery REST API: BigQuery cannot run here, so the tests
that use this say "mock" in their names. It speaks just enough of the real protocol for
the real google-cloud-bigquery client: load jobs uploaded multipart or resumable, jobs.get,
tables.get and tabledata.list, with partition decorators (``table$YYYYMMDDHH``).

Like BigQuery, a WRITE_TRUNCATE load into a decorator replaces that one partition, and a
row whose partitioning column is outside the decorator's hour fails the job.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _bq_type(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    if pa.types.is_integer(kind):
        return "INTEGER"
    if pa.types.is_floating(kind):
        return "FLOAT"
    if pa.types.is_decimal(kind):
        return "NUMERIC" if kind.precision <= 29 else "BIGNUMERIC"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    if pa.types.is_date(kind):
        return "DATE"
    if pa.types.is_binary(kind):
        return "BYTES"
    return "STRING"


@dataclass
class Table:
    schema: pa.Schema
    partition_field: str | None
    partitions: dict[str, pa.Table] = field(default_factory=dict)

    def rows(self, partition: str | None) -> pa.Table:
        parts = [self.partitions[partition]] if partition else list(self.partitions.values())
        parts = [p for p in parts if p is not None]
        return pa.concat_tables(parts) if parts else self.schema.empty_table()


class FakeBigQuery:
    """Start with ``start()``; ``url`` is the api_endpoint to give the client."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str, str], Table] = {}
        self.jobs: dict[str, dict] = {}
        self.uploads: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeBigQuery:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the API -------------------------------------------------------------------------

    def _load(self, project: str, config: dict, data: bytes) -> dict:
        load = config["configuration"]["load"]
        ref = load["destinationTable"]
        table_id, _, decorator = ref["tableId"].partition("$")
        key = (ref["projectId"], ref["datasetId"], table_id)
        job = {
            "kind": "bigquery#job",
            "jobReference": {**config.get("jobReference", {}), "projectId": project},
            "configuration": config["configuration"],
            "status": {"state": "DONE"},
            "statistics": {"creationTime": "0", "startTime": "0", "endTime": "0"},
        }
        job_id = job["jobReference"].setdefault("jobId", f"job_{next(self._ids)}")
        job["id"] = f"{project}:{job_id}"
        try:
            rows = pq.read_table(io.BytesIO(data))
            part_field = (load.get("timePartitioning") or {}).get("field")
            with self._lock:
                table = self.tables.get(key)
                if table is None:
                    if load.get("createDisposition") == "CREATE_NEVER":
                        raise ValueError(f"Not found: Table {':'.join(key)}")
                    table = self.tables[key] = Table(rows.schema, part_field)
                if decorator:
                    self._check_partition(rows, table.partition_field, decorator)
                disposition = load.get("writeDisposition", "WRITE_APPEND")
                if disposition != "WRITE_TRUNCATE":
                    raise ValueError(f"this fake takes WRITE_TRUNCATE only, not {disposition}")
                if decorator:
                    table.partitions[decorator] = rows
                else:
                    table.partitions = {"": rows}
            job["statistics"]["load"] = {"outputRows": str(rows.num_rows)}
        except (ValueError, pa.ArrowInvalid) as err:
            job["status"]["errorResult"] = {"reason": "invalid", "message": str(err)}
            job["status"]["errors"] = [job["status"]["errorResult"]]
        self.jobs[job_id] = job
        return job

    @staticmethod
    def _check_partition(rows: pa.Table, part_field: str | None, decorator: str) -> None:
        if part_field is None:
            raise ValueError("a partition decorator on a table without time partitioning")
        start = dt.datetime.strptime(decorator, "%Y%m%d%H").replace(tzinfo=dt.UTC)
        end = start + dt.timedelta(hours=1)
        column = rows[part_field]
        low, high = pc.min(column).as_py(), pc.max(column).as_py()
        if rows.num_rows and (low < start or high >= end):
            raise ValueError(f"rows outside partition {decorator} in {part_field}")

    def _table_resource(self, key, decorator: str) -> dict | None:
        table = self.tables.get(key)
        if table is None or (decorator and decorator not in table.partitions):
            return None
        rows = table.rows(decorator or None)
        resource = {
            "kind": "bigquery#table",
            "tableReference": {"projectId": key[0], "datasetId": key[1], "tableId": key[2]},
            "schema": {
                "fields": [
                    {"name": f.name, "type": _bq_type(f.type), "mode": "NULLABLE"}
                    for f in table.schema
                ]
            },
            "numRows": str(rows.num_rows),
            "type": "TABLE",
        }
        if table.partition_field:
            resource["timePartitioning"] = {"type": "HOUR", "field": table.partition_field}
        return resource

    def _data(self, key, decorator: str, query: dict) -> dict | None:
        table = self.tables.get(key)
        if table is None:
            return None
        rows = table.rows(decorator or None)
        selected = query.get("selectedFields", [""])[0]
        if selected:
            rows = rows.select(selected.split(","))
        start = int(query.get("pageToken", query.get("startIndex", ["0"]))[0])
        size = int(query.get("maxResults", ["10000"])[0])
        int64_ts = query.get("formatOptions.useInt64Timestamp", ["false"])[0].lower() == "true"
        page = rows.slice(start, size)
        out = []
        for record in page.to_pylist():
            out.append({"f": [{"v": _cell(v, int64_ts)} for v in record.values()]})
        body = {"kind": "bigquery#tableDataList", "totalRows": str(rows.num_rows), "rows": out}
        if start + size < rows.num_rows:
            body["pageToken"] = str(start + size)
        return body

    # --- HTTP ----------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict | None = None, headers=None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _route(self):
                parts = urlsplit(self.path)
                fake.requests.append((self.command, unquote(parts.path)))
                return unquote(parts.path), parse_qs(parts.query)

            def do_POST(self) -> None:
                path, query = self._route()
                match = re.fullmatch(r"/upload/bigquery/v2/projects/([^/]+)/jobs", path)
                if not match:
                    return self._send(404, {"error": {"message": f"no route {path}"}})
                project, kind = match.group(1), query.get("uploadType", [""])[0]
                body = self._body()
                if kind == "multipart":
                    config, data = _multipart(self.headers["Content-Type"], body)
                    return self._send(200, fake._load(project, config, data))
                if kind == "resumable":
                    upload_id = str(next(fake._ids))
                    fake.uploads[upload_id] = {"config": json.loads(body), "data": bytearray()}
                    location = f"{fake.url}{path}?uploadType=resumable&upload_id={upload_id}"
                    return self._send(200, {}, {"Location": location})
                return self._send(400, {"error": {"message": f"uploadType {kind}?"}})

            def do_PUT(self) -> None:
                path, query = self._route()
                upload = fake.uploads.get(query.get("upload_id", [""])[0])
                if upload is None:
                    return self._send(404, {"error": {"message": "no such upload"}})
                upload["data"] += self._body()
                total = self.headers.get("Content-Range", "").rpartition("/")[2]
                if total == "*" or int(total) > len(upload["data"]):
                    return self._send(308, None, {"Range": f"bytes=0-{len(upload['data']) - 1}"})
                project = path.split("/")[5]
                self._send(200, fake._load(project, upload["config"], bytes(upload["data"])))

            def do_GET(self) -> None:
                path, query = self._route()
                job = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/jobs/([^/]+)", path)
                if job:
                    found = fake.jobs.get(job.group(2))
                    return self._send(200, found) if found else self._send(404, {})
                table = re.fullmatch(
                    r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/([^/$]+)"
                    r"(?:\$(\d{10}))?(/data)?",
                    path,
                )
                if not table:
                    return self._send(404, {"error": {"message": f"no route {path}"}})
                key, decorator = table.group(1, 2, 3), table.group(4) or ""
                if table.group(5):
                    body = fake._data(key, decorator, query)
                else:
                    body = fake._table_resource(key, decorator)
                if body is None:
                    return self._send(404, {"error": {"code": 404, "message": "Not found"}})
                return self._send(200, body)

        return Handler


def _cell(value, int64_ts: bool):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return str(micros) if int64_ts else repr(micros / 1e6)
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    return str(value)


def _multipart(content_type: str, body: bytes) -> tuple[dict, bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    config_part, data_part = parts[0], parts[1]
    config = json.loads(config_part.split(b"\r\n\r\n", 1)[1])
    data = data_part.split(b"\r\n\r\n", 1)[1]
    return config, data[:-2] if data.endswith(b"\r\n") else data
