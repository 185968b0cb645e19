# Two commands do all set-up on a fresh machine:
#   make demo   - creates .venv, installs kohya-ext, scores the demo set (reference half vs sample half)
#   make test   - creates .venv, installs kohya-ext with test extras, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install when the venv has none (here it comes from the machine's disk;
# elsewhere pick the build for your GPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench install clean

$(VENV)/.installed: setup.py scripts/install.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	PYTHON=$(PY) scripts/install.sh --editable --test
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/kohya-ext demo --out demo_out

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) bench/landmarks.py

clean:
	rm -rf $(VENV) demo_out
