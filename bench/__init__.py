"""Benchmarks of the compliance worker on a real local Kafka broker (`make bench`, `python -m bench --help`).

Modules:
  harness.py    the command line, the benches and their JSON lines
  kafka_io.py   the bench broker, topics, pre-loading input, waiting for and reading the outputs
  procs.py      the processes under test (worker, naive Faust app, the loops, Quix app) and their RSS
  raw_loop.py   `raw_aiokafka`: the plain batched aiokafka consume -> process -> produce -> commit loop
  confluent_loop.py  `confluent_raw`: the same loop on confluent-kafka (librdkafka)
  changelog.py  the two loops' per-product state: a dict whose changes go to a changelog topic
  quix_app.py   `quix_streams`: a Quix Streams application, per-product state in its RocksDB store + changelog
  naive_app.py  `naive_faust`: the textbook Faust agent, one awaited send per event

docs/performance.md explains what each bench measures and how to read the numbers.
"""
