/* PVH guest that reports the hvm_start_info it was given: magic, command
 * line, every memmap entry, the module list (initrd) and the RSDP. */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    mov %ebx, %ebp              /* EBX = hvm_start_info */
    PRINT "magic="
    mov 0(%ebp), %eax
    call puthex
    call nl
    PRINT "cmdline="
    mov 24(%ebp), %esi          /* cmdline_paddr */
    call puts
    call nl
    PRINT "memmap_entries="
    mov 48(%ebp), %eax
    call puthex
    call nl
    mov 48(%ebp), %ecx          /* memmap_entries */
    mov 40(%ebp), %edi          /* memmap_paddr */
1:  test %ecx, %ecx
    jz 2f
    PRINT "e820="
    mov 4(%edi), %eax
    call puthex
    mov 0(%edi), %eax
    call puthex
    call sp
    mov 12(%edi), %eax
    call puthex
    mov 8(%edi), %eax
    call puthex
    call sp
    mov 16(%edi), %eax
    call puthex
    call nl
    add $24, %edi
    dec %ecx
    jmp 1b
2:  PRINT "modules="
    mov 12(%ebp), %eax          /* nr_modules */
    call puthex
    call nl
    test %eax, %eax
    jz 3f
    mov 16(%ebp), %edi          /* modlist_paddr */
    PRINT "initrd="
    mov 0(%edi), %eax
    call puthex
    call sp
    mov 8(%edi), %eax
    call puthex
    call nl
    PRINT "initrd_head="
    mov 0(%edi), %esi
    mov 0(%esi), %eax
    call puthex
    call nl
3:  PRINT "rsdp="
    mov 32(%ebp), %eax
    call puthex
    call nl
    mov $1, %eax                /* CPUID.1:ECX bit 31 = hypervisor present */
    cpuid
    PRINT "cpuid1_ecx_hv="
    mov %ecx, %eax
    shr $31, %eax
    call puthex
    call nl
    mov $0x40000000, %eax       /* hypervisor vendor leaf: EBX ECX EDX */
    cpuid
    mov %ebx, hvsig
    mov %ecx, hvsig + 4
    mov %edx, hvsig + 8
    PRINT "hv="
    mov $hvsig, %esi
    call puts
    call nl
    PRINT "done\n"
    jmp reset

    .data
hvsig:
    .fill 16, 1, 0
