/* Smallest PVH guest: enters in 32-bit protected mode, prints a line on
 * COM1 and resets through the i8042. */
    .text
    .code32
    jmp pvh_start
    .include "lib32.inc"
    .globl pvh_start
    PVH_NOTE pvh_start
pvh_start:
    mov $0x80000, %esp
    PRINT "hello from pvh\n"
    jmp reset
