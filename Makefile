# tern build. Plain GNU Make + pkg-config.
#
#   make                  build/ternd, build/ternctl, build/tern-sendmail
#   make run              install what is missing, build, run ternd on the dev configuration
#   make check            install what is missing, build, run every test (unit, sanitizers,
#                         integration, bounded fuzzing)
#   make BUILD=asan unit  unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make BUILD=asan integration   the integration tests against a sanitized ternd
#   make fuzz             run the libFuzzer targets for longer (FUZZ_SECONDS each)
#   make bench            the benchmark of bench/ (not part of check)
#
# Variant builds live in their own folders (build/ for the default, build/asan/, build/fuzz/).

BUILD ?= release
CC ?= cc
PKGS := libevent libevent_openssl libevent_pthreads openssl inih libunbound libcrypt libidn2

ifeq ($(BUILD),release)
  B := build
  OPT := -O2 -g
else ifeq ($(BUILD),asan)
  B := build/asan
  OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDOPT := -fsanitize=address,undefined
else ifeq ($(BUILD),debug)
  B := build/debug
  OPT := -O0 -g
else
  $(error unknown BUILD=$(BUILD); use release, asan or debug)
endif

WARN := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-unused-parameter -Wformat=2
CPPFLAGS += -D_GNU_SOURCE -Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS += -std=c17 $(OPT) $(WARN) -pthread
LDFLAGS += $(LDOPT) -pthread
LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# Every module outside src/cmd goes into one static library the programs and tests link.
LIB_SRCS := $(sort $(wildcard src/lib/*.c src/mail/*.c src/conf/*.c src/table/*.c \
              src/queue/*.c src/smtpd/*.c src/deliver/*.c src/control/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/obj/%.o)
PROGS := $(B)/ternd $(B)/ternctl $(B)/tern-sendmail
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)
DEPFILES := $(LIB_OBJS:.o=.d) $(B)/obj/src/cmd/*.d $(B)/obj/tests/unit/*.d

PYTHON := /usr/bin/python3
FUZZ_SECONDS ?= 20

.PHONY: all deps deps-build run check unit integration asan fuzz fuzz-check bench clean
# keep test objects between runs (they are intermediate files of the test binaries)
.SECONDARY:
all: $(PROGS)

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/libtern.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(B)/ternd: $(B)/obj/src/cmd/ternd.o $(B)/libtern.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/ternctl: $(B)/obj/src/cmd/ternctl.o $(B)/libtern.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/tern-sendmail: $(B)/obj/src/cmd/tern_sendmail.o $(B)/libtern.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# A unit test may need extra link flags (for example -Wl,--wrap=fsync to inject faults):
# it names them in a first-line comment "/* LDWRAP: ... */".
$(B)/tests/%: $(B)/obj/tests/unit/%.o $(B)/libtern.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(shell sed -n '1s/^\/\* LDWRAP: \(.*\) \*\/$$/\1/p' tests/unit/$*.c) \
	    -o $@ $< $(B)/libtern.a $(LDLIBS) -lcmocka

deps:
	@scripts/install-deps check
deps-build:
	@scripts/install-deps build

run: deps-build
	@$(MAKE) --no-print-directory all
	@scripts/dev-setup
	exec build/ternd -F -c var/ternd.conf

unit: $(UNIT_BINS)
	@scripts/run-unit "$(BUILD)" $(UNIT_BINS)

integration: $(PROGS)
	TERN_BUILD=$(CURDIR)/$(B) $(PYTHON) -m pytest -q tests/integration

asan:
	@$(MAKE) --no-print-directory BUILD=asan unit

fuzz:
	@$(MAKE) --no-print-directory -f tests/fuzz/fuzz.mk run FUZZ_SECONDS=$(FUZZ_SECONDS)

fuzz-check:
	@$(MAKE) --no-print-directory -f tests/fuzz/fuzz.mk run FUZZ_SECONDS=$(FUZZ_SECONDS)

check: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory CC=clang B=build/clang all  # clang must be clean too
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz-check FUZZ_SECONDS=12
	@$(MAKE) --no-print-directory integration
	@echo "integration tests again, ternd under AddressSanitizer + UndefinedBehaviorSanitizer:"
	@$(MAKE) --no-print-directory BUILD=asan integration

bench:
	@scripts/install-deps bench
	@$(MAKE) --no-print-directory all
	$(PYTHON) bench/run.py

clean:
	rm -rf build

-include $(wildcard $(DEPFILES))
