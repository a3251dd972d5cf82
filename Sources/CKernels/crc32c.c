// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of expert stores packed
// since session 33. On x86-64 with SSE4.2 the `crc32` instruction does 8 bytes per step; its
// latency is three steps, so three independent streams over three blocks keep it busy and the
// three partial CRCs are joined with precomputed "append N zero bytes" operators (CRC is linear
// over GF(2)). Elsewhere a table-driven loop gives the same values.
#include "CKernels.h"
#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u
// Bytes per stream in one three-stream step.
#define CRC32C_BLOCK 16384

static uint32_t crc32c_table[256];
// Column i: the raw CRC state after feeding CRC32C_BLOCK (resp. twice that) zero bytes to a
// state with only bit i set.
static uint32_t shift_block[32], shift_two_blocks[32];
static int crc32c_hardware;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static uint32_t raw_software(uint32_t state, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) state = (state >> 8) ^ crc32c_table[(state ^ p[i]) & 0xFF];
    return state;
}

static uint32_t apply(const uint32_t *columns, uint32_t state) {
    uint32_t out = 0;
    for (int bit = 0; state; bit++, state >>= 1) if (state & 1) out ^= columns[bit];
    return out;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t raw_hardware_one(uint32_t state, const uint8_t *p, size_t n) {
    uint64_t s = state;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { uint64_t v; memcpy(&v, p + i, 8); s = _mm_crc32_u64(s, v); }
    uint32_t s32 = (uint32_t)s;
    for (; i < n; i++) s32 = _mm_crc32_u8(s32, p[i]);
    return s32;
}

__attribute__((target("sse4.2")))
static uint32_t raw_hardware(uint32_t state, const uint8_t *p, size_t n) {
    while (n >= 3 * (size_t)CRC32C_BLOCK) {
        uint64_t a = state, b = 0, c = 0;
        for (size_t i = 0; i < CRC32C_BLOCK; i += 8) {
            uint64_t x, y, z;
            memcpy(&x, p + i, 8);
            memcpy(&y, p + CRC32C_BLOCK + i, 8);
            memcpy(&z, p + 2 * CRC32C_BLOCK + i, 8);
            a = _mm_crc32_u64(a, x);
            b = _mm_crc32_u64(b, y);
            c = _mm_crc32_u64(c, z);
        }
        // state(A‖B‖C) = shift(a, 2 blocks) ⊕ shift(b, 1 block) ⊕ c.
        state = apply(shift_two_blocks, (uint32_t)a) ^ apply(shift_block, (uint32_t)b) ^ (uint32_t)c;
        p += 3 * CRC32C_BLOCK;
        n -= 3 * CRC32C_BLOCK;
    }
    return raw_hardware_one(state, p, n);
}
#endif

static uint32_t raw_any(uint32_t state, const uint8_t *p, size_t n) {
#if defined(__x86_64__)
    if (crc32c_hardware) return raw_hardware(state, p, n);
#endif
    return raw_software(state, p, n);
}

static void crc32c_start(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
        crc32c_table[i] = c;
    }
    static const uint8_t zeros[CRC32C_BLOCK];
    for (int bit = 0; bit < 32; bit++) shift_block[bit] = raw_software(1u << bit, zeros, CRC32C_BLOCK);
    // Two blocks of zeros are one block twice: the operator squared.
    for (int bit = 0; bit < 32; bit++) shift_two_blocks[bit] = apply(shift_block, shift_block[bit]);
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc32c_hardware = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t moe_crc32c(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc32c_once, crc32c_start);
    return ~raw_any(~crc, (const uint8_t *)data, length);
}

uint32_t moe_crc32c_portable(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc32c_once, crc32c_start);
    return ~raw_software(~crc, (const uint8_t *)data, length);
}
