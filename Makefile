# The commands of the README:
#   make run    - the sim main job: scripted demos -> offline pre-training -> online POCO fine-tuning in MuJoCo
#   make test   - set-up when needed, then every package's tests
#   make bench  - every package's benchmarks in their quick mode (ARGS="update env": only those)
.PHONY: setup test run bench clean
setup:
	bash scripts/setup.sh
test:
	bash scripts/test.sh
run: setup
	bash scripts/run_sim.sh $(ARGS)
bench: setup
	bash scripts/bench.sh $(ARGS)
clean:
	rm -rf build install log
