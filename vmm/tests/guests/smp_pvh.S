/* SMP PVH guest: the BSP copies a real-mode trampoline to 0x8000, wakes
 * every other CPU with INIT + SIPI (vector 0x08) through its local APIC, and
 * each CPU (BSP included) sets bit <initial APIC ID from CPUID.1:EBX> in a
 * shared bitmap at 0x7f00. The BSP waits (bounded by the TSC) until the
 * bitmap equals the mask given as 8 hex digits at the start of the command
 * line, prints it and resets. */
    .include "pvh_head.inc"

    .set LAPIC, 0xfee00000
    .set ICR_LO, 0x300
    .set ICR_HI, 0x310
    .set SVR, 0x0f0
    .set BITMAP, 0x7f00
    .set TRAMPOLINE, 0x8000
    .set ICR_INIT_ALL_BUT_SELF, 0x000c4500
    .set ICR_SIPI_ALL_BUT_SELF, 0x000c4600 | (TRAMPOLINE >> 12)

pvh_start:
    mov $0x80000, %esp
    mov 24(%ebx), %esi          /* cmdline: expected mask in hex */
    call parsehex
    mov %eax, expected
    movl $0, BITMAP

    mov $tramp, %esi
    mov $TRAMPOLINE, %edi
    mov $tramp_end - tramp, %ecx
    rep movsb

    mov $1, %eax                /* BSP checks in */
    cpuid
    shr $24, %ebx
    lock bts %ebx, BITMAP

    movl $0x1ff, LAPIC + SVR    /* software-enable the local APIC */
    movl $0, LAPIC + ICR_HI
    movl $ICR_INIT_ALL_BUT_SELF, LAPIC + ICR_LO
    movl $ICR_SIPI_ALL_BUT_SELF, LAPIC + ICR_LO
    movl $ICR_SIPI_ALL_BUT_SELF, LAPIC + ICR_LO

    rdtsc                       /* wait at most ~2^34 TSC cycles */
    add $4, %edx
    mov %edx, %edi
1:  mov BITMAP, %eax
    cmp expected, %eax
    je 2f
    pause
    rdtsc
    cmp %edi, %edx
    jb 1b
2:  PRINT "cpus="
    mov BITMAP, %eax
    call puthex
    call nl
    jmp reset

parsehex:                       /* 8 upper-case hex digits at ESI -> EAX */
    xor %eax, %eax
    mov $8, %ecx
3:  shl $4, %eax
    movzbl (%esi), %edx
    inc %esi
    sub $'0', %edx
    cmp $9, %edx
    jbe 4f
    sub $7, %edx
4:  or %edx, %eax
    loop 3b
    ret

    .code16
tramp:                          /* APs start here in real mode, CS:IP = 0800:0000 */
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    lock btsl %ebx, BITMAP
5:  hlt
    jmp 5b
tramp_end:
    .code32

    .data
expected:
    .long 0
