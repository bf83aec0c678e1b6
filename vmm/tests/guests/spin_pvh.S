/* PVH guest that never stops: exercises the host-side timeout. */
    .include "pvh_head.inc"
    PRINT "spinning\n"
1:  jmp 1b
