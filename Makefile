# Entry points for people and CI. `make test` is what .ci/run calls.
.PHONY: deps build test

deps:
	@scripts/deps

build: deps
	swift build

test: deps
	swift test
