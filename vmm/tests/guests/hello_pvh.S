/* Smallest PVH guest: enters in 32-bit protected mode, prints a line on
 * COM1 and resets through the i8042. */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    PRINT "hello from pvh\n"
    jmp reset
