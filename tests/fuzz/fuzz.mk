# tests/fuzz/fuzz.mk: build and run every libFuzzer target, from the repository root.
#
#   make -f tests/fuzz/fuzz.mk              build every target
#   make -f tests/fuzz/fuzz.mk run FUZZ_SECONDS=N
#                                           run each target for N seconds; fail on any crash
#
# Every tests/fuzz/fuzz_<name>.c is a target $(FB)/fuzz_<name>, linked with all library
# sources (compiled once into $(FB)/obj with coverage and sanitizers). Seeds live in
# tests/fuzz/corpus/<name>/ (optional) and are only read: new inputs go to a scratch
# corpus $(FB)/corpus/<name>/ listed first, so committed seeds never change. Crash inputs
# are written to $(FB)/artifacts/<name>/ and each run's output to $(FB)/<name>.log.
# FB can be set to build in another folder (FB=build/myfuzz).

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ_MAX_LEN ?= 4096
FB ?= build/fuzz

# Keep these two in step with the main Makefile (PKGS, LIB_SRCS).
PKGS := libevent libevent_openssl libevent_pthreads openssl inih libunbound libcrypt libidn2
LIB_SRCS := $(sort $(wildcard src/lib/*.c src/mail/*.c src/conf/*.c src/table/*.c \
              src/queue/*.c src/smtpd/*.c src/deliver/*.c src/control/*.c))

SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
WARN := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-unused-parameter -Wformat=2
FUZZ_CPPFLAGS := -D_GNU_SOURCE -Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_CFLAGS := -std=c17 -g -O1 -fno-omit-frame-pointer $(WARN) -pthread
FUZZ_LDLIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread

FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=%)
FUZZ_BINS := $(FUZZ_NAMES:%=$(FB)/fuzz_%)
FUZZ_OBJS := $(LIB_SRCS:%.c=$(FB)/obj/%.o)

.PHONY: all run
all: $(FUZZ_BINS)

$(FB)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(SAN) -MMD -MP \
	    -c $< -o $@

$(FB)/libtern-fuzz.a: $(FUZZ_OBJS)
	@rm -f $@
	ar rcs $@ $^

# LLVMFuzzerTestOneInput is called by libFuzzer, not by our code: no prototype is needed.
$(FB)/fuzz_%: tests/fuzz/fuzz_%.c $(FB)/libtern-fuzz.a
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -Wno-missing-prototypes -fsanitize=fuzzer $(SAN) \
	    -MMD -MP \
	    -MF $(FB)/fuzz_$*.d -o $@ $< $(FB)/libtern-fuzz.a $(FUZZ_LDLIBS)

# A target that fails to start, crashes, leaks, hangs past -timeout or breaks a property
# (abort) makes libFuzzer exit non-zero; all are counted as crashes and fail the run.
run: $(FUZZ_BINS)
	@crashes=0; failed=""; \
	for name in $(FUZZ_NAMES); do \
	    mkdir -p $(FB)/corpus/$$name $(FB)/artifacts/$$name; \
	    seeds=""; [ -d tests/fuzz/corpus/$$name ] && seeds=tests/fuzz/corpus/$$name; \
	    if $(FB)/fuzz_$$name -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) \
	        -timeout=10 -print_final_stats=1 -artifact_prefix=$(FB)/artifacts/$$name/ \
	        $(FB)/corpus/$$name $$seeds >$(FB)/$$name.log 2>&1; then \
	        echo "fuzz: $$name ok ($$(grep -o 'stat::number_of_executed_units: *[0-9]*' \
	            $(FB)/$$name.log | grep -o '[0-9]*$$') runs)"; \
	    else \
	        crashes=$$((crashes + 1)); failed="$$failed $$name"; \
	        echo "fuzz: $$name FAILED, log $(FB)/$$name.log, inputs in $(FB)/artifacts/$$name/"; \
	        tail -n 40 $(FB)/$$name.log; \
	    fi; \
	done; \
	echo "fuzz: $(words $(FUZZ_NAMES)) targets ran $(FUZZ_SECONDS) seconds each, $$crashes crashes$${failed:+ (failed:$$failed)}"; \
	[ $$crashes -eq 0 ]

-include $(wildcard $(FB)/obj/src/*/*.d $(FB)/fuzz_*.d)
