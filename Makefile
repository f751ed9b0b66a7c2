# natlens: `make demo` and `make test` do all set-up on a fresh Debian 12 machine as root.
VENV   ?= .venv
PY     := $(VENV)/bin/python
NATLENS := $(VENV)/bin/natlens

.PHONY: install demo test test-unit lint proto proto-check bench image clean

install:
	@bash scripts/install.sh

demo: install
	$(NATLENS) demo

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q -m "not privileged" tests

image: install
	bash scripts/image.sh

lint: install
	$(VENV)/bin/ruff check .
	bash scripts/mypy_tree.sh

proto: install
	$(PY) scripts/gen_proto.py

proto-check: install
	$(PY) scripts/gen_proto.py --check

bench: install
	$(PY) bench/rules_parse.py
	$(PY) bench/source_cpu.py
	RATE=0 CONFIGS="ebpf aggregate" $(PY) bench/source_cpu.py
	RATE=5000 ANSWER=1 FLOOD=20000 CONFIGS=netlink,pcap $(PY) bench/source_cpu.py
	$(PY) bench/interleaved_cpu.py
	ANSWER=0 FLOODS=100 $(PY) bench/interleaved_cpu.py
	ANSWER=0 RATE=30000 ARGS="--source ebpf --decisions --no-ct-accounting" $(PY) bench/interleaved_cpu.py
	ANSWER=0 RATE=30000 ARGS="--source netlink --no-ct-accounting" $(PY) bench/interleaved_cpu.py
	$(PY) bench/ctnetlink_decode.py
	$(PY) bench/event_cost.py
	$(PY) bench/filter_runtime.py
	$(PY) bench/idle_agent.py
	$(PY) bench/pcap_import.py
	$(PY) bench/ebpf_memory.py
	$(PY) bench/ingest.py
	$(PY) bench/ingest_grpc.py
	$(PY) bench/decision_indexes.py
	$(PY) bench/store_queries.py
	$(PY) bench/recv_buffer.py
	DURATION=1800 $(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
