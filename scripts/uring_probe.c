// Raw io_uring probe of an expert file, outside moe-serve: random whole-blob O_DIRECT reads, each split
// into pieces, E blobs in flight, optionally into one registered buffer (READ_FIXED). Used to check
// whether registration, smaller pieces or more depth give this disk more bandwidth (docs/BENCHMARKS.md,
// "Where the rest of the bound goes").
//   cc -O2 -o /tmp/uring_probe scripts/uring_probe.c -luring
//   /tmp/uring_probe STORE/experts.bin BLOB_BYTES PIECE_BYTES BLOBS_IN_FLIGHT SECONDS [REGISTERED 0|1] [BLOBS]
// BLOBS limits the random blobs to the first BLOBS (the full copies, before any low-bit copies).
#define _GNU_SOURCE
#include <liburing.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int c,char**v){
  int fd=open(v[1],O_RDONLY|O_DIRECT); long blob=atol(v[2]), piece=atol(v[3]); int E=atoi(v[4]); double secs=atof(v[5]);
  int reg = c>6 ? atoi(v[6]) : 0;
  struct stat st; fstat(fd,&st); long nblobs=st.st_size/blob; if(c>7) nblobs=atol(v[7]);
  int pieces=(blob+piece-1)/piece;
  struct io_uring ring; io_uring_queue_init(256,&ring,0);
  char*buf; posix_memalign((void**)&buf,4096,blob*E);
  for(long i=0;i<blob*E;i+=4096)buf[i]=0;
  if(reg){struct iovec iv={buf,blob*E}; int r=io_uring_register_buffers(&ring,&iv,1); if(r){printf("reg fail %d\n",r);return 1;}}
  int left[64]; long bytes=0; srand(7);
  double t0=now();
  #define SUBMIT(slot) do{ long off=(rand()%nblobs)*blob; left[slot]=pieces; for(int p=0;p<pieces;p++){ long len=piece; if(p*piece+len>blob)len=blob-p*piece; struct io_uring_sqe*s=io_uring_get_sqe(&ring); if(reg) io_uring_prep_read_fixed(s,fd,buf+slot*blob+p*piece,len,off+p*piece,0); else io_uring_prep_read(s,fd,buf+slot*blob+p*piece,len,off+p*piece); io_uring_sqe_set_data64(s,slot);} io_uring_submit(&ring);}while(0)
  for(int e=0;e<E;e++) SUBMIT(e);
  long done=0;
  while(1){ struct io_uring_cqe*q; io_uring_wait_cqe(&ring,&q); int slot=io_uring_cqe_get_data64(q); if(q->res<0){printf("err %d\n",q->res);return 1;} bytes+=q->res; io_uring_cqe_seen(&ring,q);
    if(--left[slot]==0){ done++; if(now()-t0<secs) SUBMIT(slot); else { left[slot]=-1; int any=0; for(int e=0;e<E;e++) if(left[e]>0) any=1; if(!any) break; } } }
  double t=now()-t0; printf("blob %ld piece %ld experts %d reg %d: %.2f GB/s, %.3f ms/blob\n",blob,piece,E,reg,bytes/t/1e9, t/done*1e3*E);
}
