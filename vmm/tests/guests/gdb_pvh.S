/* PVH guest for the gdb stub tests: prints a line, then calls `tick`
 * forever, which counts its calls in `counter`. Its symbols are global so
 * gdb, given this ELF, finds them: `hbreak tick`, `x/wx &counter`,
 * `x/s &magic`. */
    .include "pvh_head.inc"
    .globl loop_top, tick, counter, magic
pvh_start:
    mov $0x80000, %esp
    PRINT "gdb guest up\n"
loop_top:
    call tick
    jmp loop_top
tick:
    incl counter
    ret

    .data
    .balign 4
counter:
    .long 0
magic:
    .asciz "arena gdb magic"
