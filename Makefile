# Entry points for people and CI. `make test` is what .ci/run calls.
.PHONY: deps build run test bench sanitize

deps:
	@scripts/deps

build: deps
	swift build

# Runs the gateway on its embedded default: standalone seed/global node on 127.0.0.1:4040,
# HTTP on 127.0.0.1:8080. Extra flags: make run ARGS="--log-level info".
run: deps
	swift build -c release --product aemp-gateway
	.build/release/aemp-gateway $(ARGS)

test: deps
	swift test

# The test suite under ThreadSanitizer, then AddressSanitizer with leak checks; any report fails.
# One of them: make sanitize ARGS=thread (or ARGS=address).
sanitize: deps
	scripts/sanitize $(ARGS)

# Benchmarks (not part of the tests): release build, C baseline, all scenarios of issue 6.
# Extra flags: make bench ARGS="--scenarios 1,2 --duration 5".
bench: deps
	scripts/bench $(ARGS)
