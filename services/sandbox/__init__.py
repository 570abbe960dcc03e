"""Fakes of Halaxy and the therapy platform, faithful to the reference documents.

Used by the tests, the demo and the benchmarks, in-process (`httpx.ASGITransport`,
`starlette.testclient.TestClient`) or served on a port (`halaxy-bridge sandbox`).
"""
