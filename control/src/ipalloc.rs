//! ClusterIP allocation from the service CIDR.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("the service CIDR {0} is full")]
    Full(String),
    #[error("{ip} is not in the service CIDR {cidr}")]
    OutOfRange { ip: String, cidr: String },
    #[error("{0} is already allocated")]
    Taken(String),
    #[error("\"{0}\" is not an IPv4 address")]
    Invalid(String),
}

pub struct IpAllocator {
    base: u32,
    size: u32,
    cidr: String,
    used: Mutex<(HashSet<u32>, u32)>,
}

impl IpAllocator {
    /// `base/prefix`, e.g. 10.96.0.0/16. The network address and the first host address
    /// (reserved for the `kubernetes` Service) are never handed out by `allocate`.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Self {
        let size = 1u32 << (32 - u32::from(prefix.clamp(8, 30)));
        let base = u32::from(base) & !(size - 1);
        Self {
            base,
            size,
            cidr: format!("{}/{prefix}", Ipv4Addr::from(base)),
            used: Mutex::new((HashSet::new(), 2)),
        }
    }

    /// Start handing out addresses from a random place: replicas that allocate from the same
    /// range at the same moment then almost never pick the same address.
    pub fn start_anywhere(&self) {
        use rand::Rng;
        if self.size > 4 {
            self.used.lock().unwrap().1 = rand::thread_rng().gen_range(2..self.size - 1);
        }
    }

    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn allocate(&self) -> Result<Ipv4Addr, AllocError> {
        let mut guard = self.used.lock().unwrap();
        let (used, next) = &mut *guard;
        for _ in 0..self.size {
            let off = *next;
            *next = if off + 1 >= self.size - 1 { 2 } else { off + 1 };
            if !used.contains(&off) {
                used.insert(off);
                return Ok(Ipv4Addr::from(self.base + off));
            }
        }
        Err(AllocError::Full(self.cidr.clone()))
    }

    /// Claim a specific address (a Service that names its clusterIP, or one loaded at start).
    pub fn reserve(&self, ip: &str) -> Result<(), AllocError> {
        let addr: Ipv4Addr = ip.parse().map_err(|_| AllocError::Invalid(ip.to_string()))?;
        let n = u32::from(addr);
        if n < self.base || n >= self.base + self.size {
            return Err(AllocError::OutOfRange {
                ip: ip.to_string(),
                cidr: self.cidr.clone(),
            });
        }
        if !self.used.lock().unwrap().0.insert(n - self.base) {
            return Err(AllocError::Taken(ip.to_string()));
        }
        Ok(())
    }

    pub fn release(&self, ip: &str) {
        if let Ok(addr) = ip.parse::<Ipv4Addr>() {
            let n = u32::from(addr);
            if n >= self.base {
                self.used.lock().unwrap().0.remove(&(n - self.base));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_and_reserves() {
        let a = IpAllocator::new(Ipv4Addr::new(10, 96, 0, 0), 29);
        a.reserve("10.96.0.1").unwrap();
        let mut got = HashSet::new();
        for _ in 0..5 {
            got.insert(a.allocate().unwrap());
        }
        assert_eq!(got.len(), 5);
        assert!(a.allocate().is_err());
        assert!(a.reserve("10.96.0.3").is_err());
        assert!(a.reserve("10.97.0.3").is_err());
        a.release("10.96.0.3");
        assert_eq!(a.allocate().unwrap(), Ipv4Addr::new(10, 96, 0, 3));
    }
}
