/* PVH guest that never stops: exercises the host-side timeout. */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    PRINT "spinning\n"
1:  jmp 1b
