/* A minimal bzImage-shaped guest: a real-mode setup header (boot protocol
 * 2.15, 64-bit entry supported) followed by protected-mode code whose
 * startup_64 sits at offset 0x200, exactly where Linux's is. It reports the
 * zero page (RSI) it was given over COM1 and resets through the i8042.
 * Built with `as` + `objcopy -O binary`; all data is RIP-relative. */
    .text
    .code16
    .org 0x1f1
    .byte 1                 /* 0x1f1 setup_sects: setup = 2 * 512 bytes */
    .word 0                 /* 0x1f2 root_flags */
    .long 0                 /* 0x1f4 syssize */
    .word 0                 /* 0x1f8 ram_size */
    .word 0                 /* 0x1fa vid_mode */
    .word 0                 /* 0x1fc root_dev */
    .word 0xaa55            /* 0x1fe boot_flag */
    .byte 0xeb, 0x66        /* 0x200 jump */
    .ascii "HdrS"           /* 0x202 header */
    .word 0x020f            /* 0x206 version 2.15 */
    .long 0                 /* 0x208 realmode_swtch */
    .word 0                 /* 0x20c start_sys_seg */
    .word 0                 /* 0x20e kernel_version */
    .byte 0                 /* 0x210 type_of_loader */
    .byte 1                 /* 0x211 loadflags: LOADED_HIGH */
    .word 0                 /* 0x212 setup_move_size */
    .long 0x100000          /* 0x214 code32_start */
    .long 0                 /* 0x218 ramdisk_image */
    .long 0                 /* 0x21c ramdisk_size */
    .long 0                 /* 0x220 bootsect_kludge */
    .word 0                 /* 0x224 heap_end_ptr */
    .byte 0                 /* 0x226 ext_loader_ver */
    .byte 0                 /* 0x227 ext_loader_type */
    .long 0                 /* 0x228 cmd_line_ptr */
    .long 0x7fffffff        /* 0x22c initrd_addr_max */
    .long 0x200000          /* 0x230 kernel_alignment */
    .byte 0                 /* 0x234 relocatable_kernel */
    .byte 0                 /* 0x235 min_alignment */
    .word 1                 /* 0x236 xloadflags: XLF_KERNEL_64 */
    .long 2047              /* 0x238 cmdline_size */

    .org 1024               /* protected-mode code, loaded at 1 MiB */
pm_start:
    .code32
    ud2                     /* 32-bit entry: not used */

    .org 1024 + 0x200
    .code64
    .globl startup_64
startup_64:
    mov %rsi, %rbp          /* RSI = zero page */
    lea m_mode(%rip), %rsi
    call puts
    lea m_cs(%rip), %rsi    /* boot protocol: CS = __BOOT_CS, DS = __BOOT_DS */
    call puts
    xor %eax, %eax
    mov %cs, %ax
    call puthex
    call sp
    mov %ds, %ax
    call puthex
    call nl
    lea m_hdr(%rip), %rsi
    call puts
    mov 0x202(%rbp), %eax
    call puthex
    call nl
    lea m_loader(%rip), %rsi
    call puts
    movzbl 0x210(%rbp), %eax
    call puthex
    call nl
    lea m_cmdline(%rip), %rsi
    call puts
    mov 0x228(%rbp), %esi   /* cmd_line_ptr */
    call puts
    call nl
    lea m_entries(%rip), %rsi
    call puts
    movzbl 0x1e8(%rbp), %ecx /* e820_entries */
    mov %ecx, %eax
    call puthex
    call nl
    lea 0x2d0(%rbp), %rdi   /* e820_table */
1:  test %ecx, %ecx
    jz 2f
    lea m_e820(%rip), %rsi
    call puts
    mov 0(%rdi), %rax
    call puthex64
    call sp
    mov 8(%rdi), %rax
    call puthex64
    call sp
    mov 16(%rdi), %eax
    call puthex
    call nl
    add $20, %rdi
    dec %ecx
    jmp 1b
2:  lea m_initrd(%rip), %rsi
    call puts
    mov 0x218(%rbp), %eax   /* ramdisk_image */
    call puthex
    call sp
    mov 0x21c(%rbp), %eax   /* ramdisk_size */
    call puthex
    call nl
    mov 0x218(%rbp), %eax
    test %eax, %eax
    jz 3f
    lea m_head(%rip), %rsi
    call puts
    mov 0x218(%rbp), %eax
    mov (%rax), %eax
    call puthex
    call nl
3:  lea m_done(%rip), %rsi
    call puts
    mov $0xfe, %al
    out %al, $0x64          /* i8042 reset */
4:  hlt
    jmp 4b

putc:
    push %rdx
    mov $0x3f8, %dx
    out %al, %dx
    pop %rdx
    ret
puts:
    push %rax
5:  lodsb
    test %al, %al
    jz 6f
    call putc
    jmp 5b
6:  pop %rax
    ret
puthex64:                   /* RAX as 16 hex digits */
    push %rax
    shr $32, %rax
    call puthex
    pop %rax
puthex:                     /* EAX as 8 hex digits */
    push %rax
    push %rbx
    push %rcx
    mov %eax, %ebx
    mov $8, %ecx
7:  rol $4, %ebx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 8f
    add $7, %al
8:  call putc
    loop 7b
    pop %rcx
    pop %rbx
    pop %rax
    ret
nl:
    mov $'\n', %al
    jmp putc
sp:
    mov $' ', %al
    jmp putc

m_mode:    .asciz "mode=64\n"
m_cs:      .asciz "cs_ds="
m_hdr:     .asciz "hdr="
m_loader:  .asciz "type_of_loader="
m_cmdline: .asciz "cmdline="
m_entries: .asciz "e820_entries="
m_e820:    .asciz "e820="
m_initrd:  .asciz "initrd="
m_head:    .asciz "initrd_head="
m_done:    .asciz "done\n"
