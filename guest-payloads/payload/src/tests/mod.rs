mod cpu;
mod io;
mod irq;
mod low;
mod pv;
mod state;
