/* PVH guest that never stops: exercises the host-side timeout. */
    .text
    .code32
    .globl pvh_start
    jmp pvh_start
    .include "lib32.inc"
    PVH_NOTE pvh_start
pvh_start:
    mov $0x80000, %esp
    PRINT "spinning\n"
1:  jmp 1b
