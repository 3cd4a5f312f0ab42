/*
 * fuzz.h — what the libFuzzer targets share: CHECK, which reports a broken
 * property under the target's name (FUZZ_NAME, defined before this header
 * is included) and aborts, so that libFuzzer saves the input.
 */
#ifndef KYRO_FUZZ_H
#define KYRO_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, FUZZ_NAME ": " __VA_ARGS__);                                         \
            fprintf(stderr, "\n");                                                               \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

#endif
