"""Benchmarks of the compliance worker on a real local Kafka broker (`make bench`, `python -m bench --help`).

Modules:
  harness.py    the command line, the benches and their JSON lines
  kafka_io.py   the bench broker, topics, pre-loading input, waiting for and reading the outputs
  procs.py      the processes under test (worker, naive Faust app, raw aiokafka loop) and their RSS
  raw_loop.py   `raw_aiokafka`: the plain batched aiokafka consume -> process -> produce -> commit loop
  naive_app.py  `naive_faust`: the textbook Faust agent, one awaited send per event

docs/performance.md explains what each bench measures and how to read the numbers.
"""
