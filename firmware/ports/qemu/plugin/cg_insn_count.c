/* TCG plugin that counts guest instructions executed between two marker functions.
 *
 * The QEMU port brackets Invoke() with CgCostMeterBegin()/CgCostMeterEnd() and then
 * calls CgCostMeterReport() while the inference line is half written; at that
 * moment this plugin appends " instructions=N" to QEMU's output, so the line reads
 * like the cycles line of a real board. QEMU has no cycle counter, hence the
 * different key. Counts are deterministic with `-icount shift=0`.
 *
 * With profile=PATH it also writes, at exit, one line "ADDRESS INSTRUCTIONS" per translation
 * block executed between the markers (summed over all inferences); bench/qemu.py maps the
 * addresses to functions with arm-none-eabi-nm for a flat per-function profile.
 *
 * With blocks=PATH it writes, at each report, one line "ADDRESS N_INSNS EXECUTIONS JUMPS" per
 * translation block executed since the previous report, after a line "inference K". JUMPS
 * counts the executions after which the next block run did not start where this one ends:
 * a taken branch (or call, return, table branch). bench/m4_timing.py decodes each block's
 * instructions from the ELF and turns these counts into Cortex-M4 cycles. With also
 * flash=LO:HI, each inference's block lines are followed by "flash LOADS WORDS": the data
 * loads from [LO, HI) and how many of them read another 8-byte flash word than the flash
 * load before (what a flash without a data cache has to fetch anew, paying its wait states).
 *
 * Build:  cc -shared -fPIC -O2 -o libcg_insn_count.so cg_insn_count.c
 * Run:    qemu-system-arm -M mps2-an386 -nographic -semihosting -icount shift=0 -d plugin \
 *           -plugin ./libcg_insn_count.so,begin=0x...,end=0x...,report=0x... -kernel fw.elf
 * (begin/end/report are the symbol addresses of the three markers; bench/qemu.py
 * reads them with arm-none-eabi-nm.) `-d plugin` enables qemu_plugin_outs(), which
 * writes to QEMU's log on stderr, where QEMU 7.2 also writes the semihosting console,
 * both from the vCPU thread, so the text arrives in execution order.
 *
 * Written against the public plugin API, version 1 (QEMU 7.x/8.x); the few
 * declarations it needs are repeated here so no QEMU headers are required.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- Subset of qemu-plugin.h (public API, version 1). --- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS = 0 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn;
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
typedef uint32_t qemu_plugin_meminfo_t;
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                                          uint64_t vaddr, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw,
                                      void *userdata);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_outs(const char *string);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
/* --- End of the API subset. --- */

/* Thumb symbol addresses carry bit 0; instruction addresses do not. */
static uint64_t g_begin_addr, g_end_addr, g_report_addr;
static bool g_counting;
static uint64_t g_counted;
static const char *g_profile_path;
static FILE *g_blocks_file;
static uint64_t g_inference;
/* Data loads from flash, with flash=LO:HI (only with blocks=). */
static uint64_t g_flash_lo, g_flash_hi;
static uint64_t g_flash_loads, g_flash_words, g_last_flash_word = UINT64_MAX;

/* One per translated block; a block translated twice gets two records, summed by the reader. */
struct Block {
  uint64_t address;
  uint64_t n_insns;
  uint64_t end;      /* address just past the block's last instruction */
  uint64_t counted;  /* instructions executed in this block between the markers */
  uint64_t execs;    /* executions since the last report */
  uint64_t jumps;    /* of those, the ones not followed by the block at `end` */
  struct Block *next;
};
static struct Block *g_blocks;
static struct Block *g_last;  /* block executed last while counting */

/* Control left `g_last` for `address`: a jump unless it fell through. */
static void NoteSuccessor(uint64_t address) {
  if (g_last && address != g_last->end) g_last->jumps++;
  g_last = NULL;
}

static void OnBegin(unsigned int vcpu, void *unused) {
  g_counting = true;
  g_counted = 0;
  g_last = NULL;
}

/* The call into CgCostMeterEnd is the last jump counted. */
static void OnEnd(unsigned int vcpu, void *unused) {
  NoteSuccessor(g_end_addr);
  g_counting = false;
}

static void WriteBlocks(void) {
  fprintf(g_blocks_file, "inference %" PRIu64 "\n", g_inference++);
  if (g_flash_hi) {
    fprintf(g_blocks_file, "flash %" PRIu64 " %" PRIu64 "\n", g_flash_loads, g_flash_words);
    g_flash_loads = g_flash_words = 0;
  }
  for (struct Block *b = g_blocks; b; b = b->next) {
    if (!b->execs) continue;
    fprintf(g_blocks_file, "0x%" PRIx64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", b->address,
            b->n_insns, b->execs, b->jumps);
    b->execs = b->jumps = 0;
  }
  fflush(g_blocks_file);
}

static void OnReport(unsigned int vcpu, void *unused) {
  char text[40];
  snprintf(text, sizeof text, " instructions=%" PRIu64, g_counted);
  qemu_plugin_outs(text);
  if (g_blocks_file) WriteBlocks();
}

static void OnLoad(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *unused) {
  if (!g_counting || qemu_plugin_mem_is_store(info) || vaddr < g_flash_lo || vaddr >= g_flash_hi) return;
  g_flash_loads++;
  if (vaddr >> 3 != g_last_flash_word) g_flash_words++;
  g_last_flash_word = vaddr >> 3;
}

static void OnBlock(unsigned int vcpu, void *data) {
  struct Block *block = data;
  if (g_counting) {
    g_counted += block->n_insns;
    block->counted += block->n_insns;
    block->execs++;
    NoteSuccessor(block->address);
    g_last = block;
  }
}

static void WriteProfile(qemu_plugin_id_t id, void *unused) {
  FILE *file = fopen(g_profile_path, "w");
  if (!file) {
    fprintf(stderr, "cg_insn_count: cannot write the profile to '%s'\n", g_profile_path);
    return;
  }
  for (struct Block *b = g_blocks; b; b = b->next)
    if (b->counted) fprintf(file, "0x%" PRIx64 " %" PRIu64 "\n", b->address, b->counted);
  fclose(file);
}

/* A call ends a translation block, so each marker starts its own block. */
static void OnTranslate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  uint64_t start = qemu_plugin_tb_vaddr(tb);
  qemu_plugin_vcpu_udata_cb_t callback = OnBlock;
  void *data = NULL;
  if (start == g_begin_addr) callback = OnBegin;
  else if (start == g_end_addr) callback = OnEnd;
  else if (start == g_report_addr) callback = OnReport;
  else {
    struct Block *block = calloc(1, sizeof *block);
    if (!block) abort();
    block->address = start;
    block->n_insns = qemu_plugin_tb_n_insns(tb);
    struct qemu_plugin_insn *last = qemu_plugin_tb_get_insn(tb, block->n_insns - 1);
    block->end = qemu_plugin_insn_vaddr(last) + qemu_plugin_insn_size(last);
    block->next = g_blocks;
    g_blocks = block;
    data = block;
  }
  qemu_plugin_register_vcpu_tb_exec_cb(tb, callback, QEMU_PLUGIN_CB_NO_REGS, data);
  if (g_flash_hi) {
    /* Loads and stores, stores dropped in OnLoad: QEMU 7.2 calls a load-only callback for none. */
    for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); ++i)
      qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), OnLoad, QEMU_PLUGIN_CB_NO_REGS,
                                       QEMU_PLUGIN_MEM_RW, NULL);
  }
}

static bool ParseAddress(const char *arg, const char *key, uint64_t *out) {
  size_t key_len = strlen(key);
  if (strncmp(arg, key, key_len) != 0 || arg[key_len] != '=') return false;
  *out = strtoull(arg + key_len + 1, NULL, 0) & ~(uint64_t)1;
  return true;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv) {
  for (int i = 0; i < argc; ++i) {
    if (!ParseAddress(argv[i], "begin", &g_begin_addr) &&
        !ParseAddress(argv[i], "end", &g_end_addr) &&
        !ParseAddress(argv[i], "report", &g_report_addr)) {
      if (strncmp(argv[i], "profile=", 8) == 0 && argv[i][8]) {
        g_profile_path = argv[i] + 8;
        continue;
      }
      if (strncmp(argv[i], "flash=", 6) == 0) {
        char *rest = NULL;
        g_flash_lo = strtoull(argv[i] + 6, &rest, 0);
        if (*rest == ':') g_flash_hi = strtoull(rest + 1, NULL, 0);
        if (g_flash_hi <= g_flash_lo) {
          fprintf(stderr, "cg_insn_count: flash=LO:HI needs LO < HI\n");
          return -1;
        }
        continue;
      }
      if (strncmp(argv[i], "blocks=", 7) == 0 && argv[i][7]) {
        g_blocks_file = fopen(argv[i] + 7, "w");
        if (!g_blocks_file) {
          fprintf(stderr, "cg_insn_count: cannot write '%s'\n", argv[i] + 7);
          return -1;
        }
        continue;
      }
      fprintf(stderr, "cg_insn_count: unknown argument '%s'\n", argv[i]);
      return -1;
    }
  }
  if (!g_begin_addr || !g_end_addr || !g_report_addr) {
    fprintf(stderr, "cg_insn_count: needs begin=, end= and report= addresses\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, OnTranslate);
  if (g_profile_path) qemu_plugin_register_atexit_cb(id, WriteProfile, NULL);
  return 0;
}
