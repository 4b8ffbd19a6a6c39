/* crc32c: CRC-32C (Castagnoli), the checksum of queue records. Pure, thread-safe. */
#ifndef TERN_CRC32C_H
#define TERN_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Start with crc = 0; feed pieces in order to extend. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
