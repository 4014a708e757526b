mod cpu;
mod cpu_exc;
mod cpu_sys;
mod io;
mod irq;
mod low;
mod pv;
mod state;
